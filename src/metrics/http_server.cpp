#include "metrics/http_server.h"

#include <fmt/format.h>
#include <httplib.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <chrono>
#include <stdexcept>

#include "metrics/connections_json.h"
#include "metrics/exposition.h"

namespace vhost_vsock::metrics {
namespace {

// Scrapes are rare and small: two request threads are plenty, and short
// timeouts keep an idle keep-alive client from holding one for long.
constexpr size_t kRequestThreads = 2;
constexpr time_t kIoTimeoutSeconds = 5;
constexpr time_t kKeepAliveSeconds = 2;

}  // namespace

HttpServer::HttpServer(const ListenAddress& address, std::string version, SnapshotSource source)
    : version_(std::move(version)), source_(std::move(source)), server_(std::make_unique<httplib::Server>()) {
  server_->new_task_queue = [] { return new httplib::ThreadPool(kRequestThreads); };
  server_->set_read_timeout(kIoTimeoutSeconds);
  server_->set_write_timeout(kIoTimeoutSeconds);
  server_->set_keep_alive_timeout(kKeepAliveSeconds);
  server_->set_payload_max_length(4096);  // GETs only
  // httplib's default adds SO_REUSEPORT, which would let a second daemon bind
  // the same port and take half the scrapes: SO_REUSEADDR only.
  server_->set_socket_options([](int sock) {
    const int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  route();
  const int port = address.port == 0 ? server_->bind_to_any_port(address.host)
                                     : (server_->bind_to_port(address.host, address.port) ? address.port : -1);
  if (port <= 0) {
    throw std::runtime_error(fmt::format("metrics: cannot listen on {}", address.to_string()));
  }
  port_ = static_cast<uint16_t>(port);
}

HttpServer::~HttpServer() {
  stop();
}

void HttpServer::route() {
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(prometheus_text(source_(), version_), std::string(kPrometheusContentType));
  });
  server_->Get("/connections", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(connections_json(source_()), "application/json");
  });
  server_->set_exception_handler(
      [](const httplib::Request& request, httplib::Response& response, const std::exception_ptr& error) {
        try {
          if (error) std::rethrow_exception(error);
        } catch (const std::exception& e) {
          spdlog::warn("metrics: {} {} failed: {}", request.method, request.path, e.what());
        }
        response.status = 500;
        response.set_content("internal error\n", "text/plain");
      });
}

void HttpServer::start() {
  thread_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "vsock-metrics");
    if (!server_->listen_after_bind()) spdlog::error("metrics: the HTTP server stopped unexpectedly");
    listen_returned_ = true;
  });
}

void HttpServer::stop() {
  if (!thread_.joinable()) return;
  // httplib's stop() reaches only a server that is listening already.
  while (!server_->is_running() && !listen_returned_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  server_->stop();
  thread_.join();
}

}  // namespace vhost_vsock::metrics
