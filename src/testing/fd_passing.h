// Sending bytes with file descriptors attached (SCM_RIGHTS), as a vhost-user
// front-end does. One copy for the simulator's front-end, the vhost_user tests
// and the vhost-user fuzzer; header-only (like temp_dir.h) so that the lower
// layers' tests can use it without linking the simulator.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <cstring>
#include <span>
#include <vector>

namespace vhost_vsock::testing {

// One sendmsg() of `iov` on a Unix socket with `fds` riding along with the
// first byte (no control message when `fds` is empty). Returns what sendmsg()
// returns.
inline ssize_t send_with_fds(int socket, std::span<const iovec> iov, std::span<const int> fds, int flags) {
  msghdr header{};
  header.msg_iov = const_cast<iovec*>(iov.data());
  header.msg_iovlen = iov.size();
  std::vector<char> control;  // operator new's alignment suits cmsghdr
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
    header.msg_control = control.data();
    header.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&header);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  return ::sendmsg(socket, &header, flags);
}

}  // namespace vhost_vsock::testing
