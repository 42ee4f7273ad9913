// A short-named temporary directory for tests, removed with its contents.
// Short, because AF_UNIX paths are limited to 107 bytes.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "base/errno_text.h"
#include "base/unix_socket_address.h"

namespace vhost_vsock::daemon::test {

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/vuvdXXXXXX";
    const char* made = ::mkdtemp(pattern);
    EXPECT_NE(made, nullptr) << base::errno_text(errno);
    path_ = made ? made : "/tmp";
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

}  // namespace vhost_vsock::daemon::test
