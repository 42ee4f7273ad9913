#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "base/bits.h"
#include "base/errno_text.h"
#include "base/unix_socket_address.h"

namespace vhost_vsock::base {
namespace {

TEST(IsPowerOfTwo, ZeroIsNotOneIs) {
  static_assert(!is_power_of_two(0u));
  static_assert(is_power_of_two(1u));
  EXPECT_TRUE(is_power_of_two(uint16_t{32768}));
  EXPECT_FALSE(is_power_of_two(uint32_t{384}));
  EXPECT_TRUE(is_power_of_two(uint64_t{1} << 63));
  EXPECT_FALSE(is_power_of_two(~uint64_t{0}));
}

TEST(ErrnoText, DescribesTheError) {
  EXPECT_EQ(errno_text(ENOENT), "No such file or directory");
  EXPECT_FALSE(errno_text(EMFILE).empty());
}

TEST(UnixSocketAddress, CopiesThePathWithItsTerminator) {
  const sockaddr_un address = unix_socket_address("/tmp/x.sock");
  EXPECT_EQ(address.sun_family, AF_UNIX);
  EXPECT_STREQ(address.sun_path, "/tmp/x.sock");
  const std::string longest(kMaxUnixPathLength, 'a');
  EXPECT_EQ(std::strlen(unix_socket_address(longest).sun_path), kMaxUnixPathLength);
}

TEST(UnixSocketAddress, RefusesEmptyAndTooLongPathsNamingThem) {
  const std::string too_long(kMaxUnixPathLength + 1, 'b');
  try {
    unix_socket_address(too_long);
    FAIL() << "a " << too_long.size() << "-byte path was accepted";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(too_long), std::string::npos) << what;
    EXPECT_NE(what.find(std::to_string(kMaxUnixPathLength)), std::string::npos) << what;
  }
  EXPECT_THROW(unix_socket_address(""), std::runtime_error);
}

}  // namespace
}  // namespace vhost_vsock::base
