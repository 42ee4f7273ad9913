// The --metrics HTTP endpoint (cpp-httplib): GET /metrics (Prometheus text)
// and GET /connections (JSON). It runs on threads of its own and never
// touches a worker's state: each request asks `source` for fresh snapshots,
// which the daemon gets by posting to every worker's event loop.
//
// Bound in the constructor, on the caller's thread (before the sandbox, like
// every other socket); serving starts with start(), after it.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "metrics/listen_address.h"
#include "metrics/snapshot.h"

namespace httplib {
class Server;
}

namespace vhost_vsock::metrics {

class HttpServer {
 public:
  using SnapshotSource = std::function<std::vector<VmSnapshot>()>;

  // Throws std::runtime_error naming the address if it cannot be bound.
  HttpServer(const ListenAddress& address, std::string version, SnapshotSource source);
  ~HttpServer();  // stop() and join
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  void start();
  void stop();                                           // any thread; idempotent
  [[nodiscard]] uint16_t port() const { return port_; }  // the bound port (useful with port 0 in tests)

 private:
  void route();

  std::string version_;
  SnapshotSource source_;
  std::unique_ptr<httplib::Server> server_;
  uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<bool> listen_returned_{false};
};

}  // namespace vhost_vsock::metrics
