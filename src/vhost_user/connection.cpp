#include "vhost_user/connection.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "base/errno_text.h"

namespace vhost_vsock::vhost_user {
namespace {

// The SCM_RIGHTS fds recvmsg() put into `header`.
std::vector<base::UniqueFd> take_received_fds(msghdr& header) {
  std::vector<base::UniqueFd> fds;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&header); cmsg != nullptr; cmsg = CMSG_NXTHDR(&header, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(cmsg);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
      fds.emplace_back(fd);
    }
  }
  return fds;
}

}  // namespace

FrontendConnection::FrontendConnection(base::EventLoop& loop, base::UniqueFd socket, Device& device, ServerStats& stats,
                                       std::string name)
    : session_(loop, device, stats, name), socket_(std::move(socket)), name_(std::move(name)), stats_(stats) {
  reply_.reserve(512);
}

FrontendConnection::~FrontendConnection() {
  session_.shutdown();
}

bool FrontendConnection::on_socket_event(uint32_t /*epoll_events*/) {
  // Errors and hang-ups surface through recvmsg (an error or EOF), after any
  // messages still queued in the socket have been handled.
  for (int reads = 0; reads < kMaxReadsPerEvent; ++reads) {
    switch (read_some()) {
      case ReadResult::kWouldBlock:
        return true;
      case ReadResult::kClosed:
        return false;
      case ReadResult::kPartial:
        continue;
      case ReadResult::kMessage:
        break;
    }
    ++stats_.messages;
    reply_.clear();
    if (session_.handle(assembler_.take(), reply_) == Session::Outcome::kDisconnect) return false;
    if (!reply_.empty() && !send_reply()) return false;
  }
  return true;
}

FrontendConnection::ReadResult FrontendConnection::read_some() {
  // Read no further than the end of the current message, so the fds that come
  // with the next message's first byte are never attached to this one.
  std::span<uint8_t> area = assembler_.next_read_area();
  iovec iov{area.data(), area.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msghdr header{};
  header.msg_iov = &iov;
  header.msg_iovlen = 1;
  header.msg_control = control;
  header.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(socket_.get(), &header, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return ReadResult::kWouldBlock;
    spdlog::warn("vhost-user {}: reading from the front-end failed: {}", name_, base::errno_text(errno));
    return ReadResult::kClosed;
  }

  // Own every received fd first, so each one is closed whatever happens next.
  std::vector<base::UniqueFd> fds = take_received_fds(header);
  if ((header.msg_flags & MSG_CTRUNC) != 0) {
    ++stats_.protocol_errors;
    spdlog::warn("vhost-user {}: the front-end sent more than {} file descriptors with one message", name_,
                 kMaxFdsPerMessage);
    return ReadResult::kClosed;
  }
  if (n == 0) {
    if (assembler_.mid_message()) {
      spdlog::warn("vhost-user {}: the front-end closed the connection in the middle of a message", name_);
    } else {
      spdlog::info("vhost-user {}: the front-end closed the connection", name_);
    }
    return ReadResult::kClosed;
  }
  std::string error;
  for (auto& fd : fds) {
    if (!assembler_.add_fd(std::move(fd), &error)) {
      ++stats_.protocol_errors;
      spdlog::warn("vhost-user {}: {}", name_, error);
      return ReadResult::kClosed;
    }
  }
  switch (assembler_.commit(static_cast<size_t>(n), &error)) {
    case MessageAssembler::Status::kComplete:
      return ReadResult::kMessage;
    case MessageAssembler::Status::kNeedMore:
      return ReadResult::kPartial;
    case MessageAssembler::Status::kError:
      break;
  }
  ++stats_.protocol_errors;
  spdlog::warn("vhost-user {}: dropping the front-end: {}", name_, error);
  return ReadResult::kClosed;
}

bool FrontendConnection::send_reply() {
  ssize_t n;
  do {
    n = ::send(socket_.get(), reply_.data(), reply_.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(reply_.size())) return true;
  if (n < 0) {
    spdlog::warn("vhost-user {}: sending a reply failed: {}", name_, base::errno_text(errno));
  } else {
    spdlog::warn("vhost-user {}: the front-end's socket took {} of {} reply bytes; dropping it", name_, n,
                 reply_.size());
  }
  return false;
}

}  // namespace vhost_vsock::vhost_user
