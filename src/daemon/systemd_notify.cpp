#include "daemon/systemd_notify.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "base/errno_text.h"

namespace vhost_vsock::daemon {
namespace {

// $NOTIFY_SOCKET is a path, or an abstract name written with a leading '@'.
bool notify_address(const std::string& name, sockaddr_un* address, socklen_t* length) {
  if (name.empty() || name.size() >= sizeof(address->sun_path) || (name[0] != '/' && name[0] != '@')) return false;
  *address = {};
  address->sun_family = AF_UNIX;
  std::memcpy(address->sun_path, name.data(), name.size());
  if (name[0] == '@') address->sun_path[0] = '\0';
  *length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (name[0] == '/' ? 1 : 0));
  return true;
}

}  // namespace

SystemdNotifier::SystemdNotifier() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): runs before any worker thread exists.
  const char* name = std::getenv("NOTIFY_SOCKET");
  if (name == nullptr) return;
  const std::string path(name);
  // NOLINTNEXTLINE(concurrency-mt-unsafe): as above.
  ::unsetenv("NOTIFY_SOCKET");
  sockaddr_un address{};
  socklen_t length = 0;
  if (!notify_address(path, &address, &length)) {
    spdlog::warn("NOTIFY_SOCKET '{}' is not a socket path or @abstract name; not notifying systemd", path);
    return;
  }
  base::UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd || ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), length) != 0) {
    spdlog::warn("NOTIFY_SOCKET '{}': {}; not notifying systemd", path, base::errno_text(errno));
    return;
  }
  socket_ = std::move(fd);
}

void SystemdNotifier::notify(std::string_view state) {
  if (!enabled()) return;
  if (::send(socket_.get(), state.data(), state.size(), MSG_NOSIGNAL) < 0) {
    spdlog::warn("notifying systemd of {}: {}", state, base::errno_text(errno));
  }
}

}  // namespace vhost_vsock::daemon
