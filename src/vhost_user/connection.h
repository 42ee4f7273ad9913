// One connected front-end: reads messages (with their SCM_RIGHTS fds) from
// the non-blocking vhost-user socket, hands them to a Session, and writes the
// replies. The owner registers fd() with the event loop and calls
// on_socket_event(); when it returns false the owner destroys the connection.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/unique_fd.h"
#include "vhost_user/device.h"
#include "vhost_user/message.h"
#include "vhost_user/session.h"
#include "vhost_user/stats.h"

namespace vhost_vsock::vhost_user {

class FrontendConnection {
 public:
  // Reads (a message takes one or two: header, then payload) per readiness
  // event before yielding to the rest of the loop; epoll is level-triggered,
  // so the remainder is picked up in the next round.
  static constexpr int kMaxReadsPerEvent = 128;

  FrontendConnection(base::EventLoop& loop, base::UniqueFd socket, Device& device, ServerStats& stats,
                     std::string name);
  // Shuts the session down (rings stopped, device told) before closing the socket.
  ~FrontendConnection();
  FrontendConnection(const FrontendConnection&) = delete;
  FrontendConnection& operator=(const FrontendConnection&) = delete;

  [[nodiscard]] int fd() const { return socket_.get(); }
  [[nodiscard]] Session& session() { return session_; }

  // Reads and handles what is available. False: the front-end closed the
  // socket, an I/O error occurred, or it broke the protocol; drop it.
  bool on_socket_event(uint32_t epoll_events);

 private:
  enum class ReadResult { kMessage, kPartial, kWouldBlock, kClosed };
  ReadResult read_some();
  // Replies are a few hundred bytes at most and the front-end waits for each
  // one, so a reply that does not fit in the socket buffer at once means the
  // front-end is stuck or hostile: treated as an error, never queued.
  bool send_reply();

  Session session_;
  base::UniqueFd socket_;
  std::string name_;
  ServerStats& stats_;
  MessageAssembler assembler_;
  std::vector<uint8_t> reply_;
};

}  // namespace vhost_vsock::vhost_user
