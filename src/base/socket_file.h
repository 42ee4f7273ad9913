// The identity of a socket file we bound, so that at exit we remove only our
// own file and never a successor's that replaced it at the same path.
#pragma once

#include <sys/types.h>

#include <string>

namespace vhost_vsock::base {

class BoundSocketFile {
 public:
  BoundSocketFile() = default;
  // Records the file now at `path` (call right after bind()).
  explicit BoundSocketFile(std::string path);

  [[nodiscard]] const std::string& path() const { return path_; }
  // True while `path` still names the file recorded at construction.
  [[nodiscard]] bool still_ours() const;
  // Unlinks `path` if it is still ours; returns whether it did.
  bool unlink_if_ours() const;

 private:
  std::string path_;
  bool recorded_ = false;
  dev_t device_ = 0;
  ino_t inode_ = 0;
};

}  // namespace vhost_vsock::base
