#include "base/socket_file.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "base/unique_fd.h"
#include "testing/temp_dir.h"

namespace vhost_vsock::base {
namespace {

class BoundSocketFileTest : public ::testing::Test {
 protected:
  UniqueFd bind_at_path() const {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path_.c_str(), path_.size() + 1);
    EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0);
    return fd;
  }
  vhost_vsock::testing::TempDir dir_;
  std::string path_ = dir_.file("s.sock");
};

TEST_F(BoundSocketFileTest, UnlinksItsOwnFile) {
  UniqueFd fd = bind_at_path();
  BoundSocketFile file(path_);
  EXPECT_TRUE(file.still_ours());
  EXPECT_TRUE(file.unlink_if_ours());
  struct stat info {};
  EXPECT_NE(::lstat(path_.c_str(), &info), 0);
}

TEST_F(BoundSocketFileTest, LeavesASuccessorsFileAlone) {
  UniqueFd ours = bind_at_path();
  BoundSocketFile file(path_);
  ASSERT_EQ(::unlink(path_.c_str()), 0);  // another daemon replaced the stale-looking file
  UniqueFd theirs = bind_at_path();
  EXPECT_FALSE(file.still_ours());
  EXPECT_FALSE(file.unlink_if_ours());
  struct stat info {};
  EXPECT_EQ(::lstat(path_.c_str(), &info), 0);
}

TEST_F(BoundSocketFileTest, NothingRecordedMeansNothingRemoved) {
  BoundSocketFile file(path_);  // no file there yet
  UniqueFd fd = bind_at_path();
  EXPECT_FALSE(file.unlink_if_ours());
}

}  // namespace
}  // namespace vhost_vsock::base
