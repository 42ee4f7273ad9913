// The AF_VSOCK forwarding transport (vhost-device-vsock's --forward-cid): a
// guest connect to CID 2, port P becomes a host connect to (forward CID, P).
// Unlike AF_UNIX, an AF_VSOCK connect takes time (the peer VM answers), so
// the connect is non-blocking: the endpoint starts in the connecting state
// and reports `connected` or `hangup` through watch().
//
// The socket family and address come from an injectable function, so tests
// exercise the same code with AF_UNIX and AF_INET loopback stand-ins: tests
// must never open AF_VSOCK sockets on the test host itself.
//
// The router dials through it when Router::Options::forward_to is set.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "base/event_loop.h"
#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock {

// A socket address of any family, as connect() takes it.
struct ForwardAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  [[nodiscard]] int family() const { return storage.ss_family; }
};

// Where a guest connect to `port` goes; nullopt refuses it.
using ForwardAddressFor = std::function<std::optional<ForwardAddress>(uint32_t port)>;

// (cid, port) as a sockaddr_vm; building it opens no socket.
ForwardAddress vsock_address(uint32_t cid, uint32_t port);
// The production mapping: every port to (cid, port).
ForwardAddressFor forward_to_cid(uint32_t cid);

// A stream endpoint whose connect may still be in progress.
class ConnectingStreamEndpoint : public UnixStreamEndpoint {
 public:
  // `fd` is non-blocking; `connecting`: connect() said EINPROGRESS.
  ConnectingStreamEndpoint(base::EventLoop& loop, base::UniqueFd fd, bool connecting);

  // While connecting, the first readiness is turned into `connected` (with
  // `writable`) or, when SO_ERROR says the connect failed, `hangup`.
  void watch(EventCallback callback) override;
  [[nodiscard]] bool connecting() const override { return connecting_; }
  // The connect's failure (errno), 0 while connecting or once connected.
  [[nodiscard]] int connect_error() const override { return connect_error_; }

 private:
  HostEvents finish_connect(uint32_t epoll_events);

  bool connecting_;
  int connect_error_ = 0;
};

class VsockForwardDialer {
 public:
  struct Result {
    std::unique_ptr<ConnectingStreamEndpoint> endpoint;  // connected or connecting; null on failure
    int error = 0;                                       // errno on failure
    std::string failure;                                 // for the log
  };

  VsockForwardDialer(base::EventLoop& loop, ForwardAddressFor address_for);

  // Never blocks. A connect that fails at once (ECONNREFUSED, ENODEV, no
  // such CID, ...) is a failure here; one in progress returns a connecting
  // endpoint. The caller bounds the connecting time with its own timer.
  [[nodiscard]] Result dial(uint32_t port) const;

 private:
  base::EventLoop& loop_;
  ForwardAddressFor address_for_;
};

}  // namespace vhost_vsock::vsock
