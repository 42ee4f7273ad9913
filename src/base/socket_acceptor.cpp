#include "base/socket_acceptor.h"

#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <system_error>
#include <utility>

#include "base/errno_text.h"

namespace vhost_vsock::base {
namespace {

bool out_of_resources(int error) {
  return error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM;
}

}  // namespace

SocketAcceptor::SocketAcceptor(EventLoop& loop, UniqueFd socket, AcceptCallback on_accept, Options options)
    : loop_(loop),
      socket_(std::move(socket)),
      on_accept_(std::move(on_accept)),
      options_(std::move(options)),
      pause_log_(options_.name + " accept pauses", 1, options_.warning_interval),
      error_log_(options_.name + " accept failures", 1, options_.warning_interval) {
  watch();
}

SocketAcceptor::~SocketAcceptor() {
  if (destroyed_ != nullptr) *destroyed_ = true;
  if (resume_timer_ != 0) loop_.cancel_timer(resume_timer_);
  loop_.remove(socket_.get());
}

void SocketAcceptor::watch() {
  loop_.add(socket_.get(), EPOLLIN, [this](uint32_t) { accept_ready(); });
}

void SocketAcceptor::accept_ready() {
  bool destroyed = false;
  destroyed_ = &destroyed;
  try {
    accept_batch(destroyed);
  } catch (...) {
    if (!destroyed) destroyed_ = nullptr;
    throw;
  }
  if (!destroyed) destroyed_ = nullptr;
}

void SocketAcceptor::accept_batch(const bool& destroyed) {
  for (int i = 0; i < options_.accepts_per_event; ++i) {
    UniqueFd connection(::accept4(socket_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!connection) {
      const int error = errno;
      if (error == EINTR || error == ECONNABORTED) continue;
      if (error == EAGAIN || error == EWOULDBLOCK) return;
      if (out_of_resources(error)) {
        pause_after(error);
        return;
      }
      if (error_log_.allow()) spdlog::warn("{}: accept failed: {}", options_.name, errno_text(error));
      return;  // level-triggered: a lasting failure comes back next iteration
    }
    ++stats_.accepted;
    on_accept_(std::move(connection));
    if (destroyed) return;
  }
}

void SocketAcceptor::pause_after(int error) {
  ++stats_.pauses;
  if (pause_log_.allow()) {
    spdlog::warn("{}: accept failed: {}; pausing the listener for {} ms", options_.name, errno_text(error),
                 options_.pause.count());
  }
  loop_.remove(socket_.get());
  resume_timer_ = loop_.add_timer(options_.pause, [this] { resume(); });
}

void SocketAcceptor::resume() {
  resume_timer_ = 0;
  try {
    watch();
  } catch (const std::system_error& e) {
    spdlog::warn("{}: cannot resume the listener: {}; retrying in {} ms", options_.name, e.what(),
                 options_.pause.count());
    resume_timer_ = loop_.add_timer(options_.pause, [this] { resume(); });
  }
}

}  // namespace vhost_vsock::base
