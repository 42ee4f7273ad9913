// A short-named temporary directory for tests, removed with its contents.
// Short, because AF_UNIX paths are limited to 107 bytes. Header-only (target
// vuv_test_temp_dir) so that the tests of the lower layers can use it without
// linking the simulator.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>

#include "base/errno_text.h"
#include "base/unix_socket_address.h"

namespace vhost_vsock::testing {

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/vuvtXXXXXX";
    // Throws rather than falling back to a shared dir the destructor would empty.
    if (::mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp: " + base::errno_text(errno));
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::string file(const std::string& name) const { return path_ + "/" + name; }

  std::string write(const std::string& name, const std::string& contents) const {
    std::ofstream out(file(name));
    out << contents;
    return file(name);
  }

  // Leaves a bound (then closed) Unix socket file at `name`, like a stale one.
  std::string make_socket_file(const std::string& name) const {
    std::string path = file(name);
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    const sockaddr_un addr = base::unix_socket_address(path);
    EXPECT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0) << base::errno_text(errno);
    ::close(fd);
    return path;
  }

 private:
  std::string path_;
};

}  // namespace vhost_vsock::testing
