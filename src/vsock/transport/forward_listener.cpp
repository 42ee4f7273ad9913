#include "vsock/transport/forward_listener.h"

#include <fmt/format.h>
#include <linux/vm_sockets.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <stdexcept>
#include <system_error>

#include "base/errno_text.h"
#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock {
namespace {

constexpr int kBacklog = 1024;
constexpr int kAcceptsPerEvent = 256;  // bounds one readiness event
constexpr std::chrono::milliseconds kPauseAfterExhaustion{100};

bool out_of_resources(int error) {
  return error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM;
}

}  // namespace

ForwardAddress vsock_listen_address(uint32_t port) {
  return vsock_address(VMADDR_CID_ANY, port);
}

ForwardListener::ForwardListener(base::EventLoop& loop, uint32_t port, const ForwardAddress& address,
                                 OnAccepted on_accepted)
    : loop_(loop), port_(port), on_accepted_(std::move(on_accepted)) {
  auto fail = [port](const char* what, int error) {
    throw std::runtime_error(fmt::format("forward-listen port {}: {}: {}", port, what, base::errno_text(error)));
  };
  base::UniqueFd socket(::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!socket) fail("socket", errno);
  if (::bind(socket.get(), reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
    fail("bind", errno);
  }
  if (::listen(socket.get(), kBacklog) != 0) fail("listen", errno);
  socket_ = std::move(socket);
  try {
    watch();
  } catch (const std::system_error& error) {
    throw std::runtime_error(fmt::format("forward-listen port {}: cannot watch the socket: {}", port, error.what()));
  }
}

void ForwardListener::watch() {
  loop_.add(socket_.get(), EPOLLIN, [this](uint32_t) { accept_batch(); });
}

ForwardListener::~ForwardListener() {
  if (resume_timer_ != 0) loop_.cancel_timer(resume_timer_);
  loop_.remove(socket_.get());
}

void ForwardListener::accept_batch() {
  for (int i = 0; i < kAcceptsPerEvent; ++i) {
    base::UniqueFd connection(::accept4(socket_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!connection) {
      const int error = errno;
      if (error == EINTR || error == ECONNABORTED) continue;
      if (out_of_resources(error)) {
        spdlog::warn("forward-listen port {}: accept failed: {}; pausing for {} ms", port_, base::errno_text(error),
                     kPauseAfterExhaustion.count());
        pause();
      } else if (error != EAGAIN && error != EWOULDBLOCK) {
        spdlog::warn("forward-listen port {}: accept failed: {}", port_, base::errno_text(error));
      }
      return;  // level-triggered: what is still queued comes back next iteration
    }
    on_accepted_(std::make_unique<UnixStreamEndpoint>(loop_, std::move(connection)), port_);
  }
}

void ForwardListener::pause() {
  loop_.remove(socket_.get());
  resume_timer_ = loop_.add_timer(kPauseAfterExhaustion, [this] { resume(); });
}

void ForwardListener::resume() {
  resume_timer_ = 0;
  try {
    watch();
  } catch (const std::system_error& error) {
    spdlog::warn("forward-listen port {}: cannot watch the listener: {}", port_, error.what());
    resume_timer_ = loop_.add_timer(kPauseAfterExhaustion, [this] { resume(); });
  }
}

}  // namespace vhost_vsock::vsock
