#include "base/socket_file.h"

#include <sys/stat.h>
#include <unistd.h>

namespace vhost_vsock::base {

BoundSocketFile::BoundSocketFile(std::string path) : path_(std::move(path)) {
  struct stat info {};
  if (::lstat(path_.c_str(), &info) == 0) {
    recorded_ = true;
    device_ = info.st_dev;
    inode_ = info.st_ino;
  }
}

bool BoundSocketFile::still_ours() const {
  struct stat info {};
  return recorded_ && ::lstat(path_.c_str(), &info) == 0 && info.st_dev == device_ && info.st_ino == inode_;
}

bool BoundSocketFile::unlink_if_ours() const {
  return still_ours() && ::unlink(path_.c_str()) == 0;
}

}  // namespace vhost_vsock::base
