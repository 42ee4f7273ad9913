// The protocol state of one front-end: negotiated features, the memory table,
// and the vrings with their eventfds. Consumes complete messages and produces
// reply bytes; it never touches the vhost-user socket, so tests and the fuzzer
// drive it directly. Kick eventfds are watched on the owner's event loop.
#pragma once

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/unique_fd.h"
#include "memory/guest_memory.h"
#include "vhost_user/device.h"
#include "vhost_user/message.h"
#include "vhost_user/ring_queues.h"
#include "vhost_user/stats.h"

namespace vhost_vsock::vhost_user {

// Protocol features this backend implements.
inline constexpr uint64_t kOfferedProtocolFeatures =
    kProtocolFeatureMq | kProtocolFeatureReplyAck | kProtocolFeatureConfig;
// Vrings served at most (the SET_VRING_* payloads carry an 8-bit index).
inline constexpr uint16_t kMaxVrings = 64;

class Session final {
 public:
  enum class Outcome { kContinue, kDisconnect };

  // `name` identifies the connection in logs (the socket path).
  Session(base::EventLoop& loop, Device& device, ServerStats& stats, std::string name);
  ~Session();  // shutdown()
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Handles one complete message (closing any fds it does not keep) and
  // appends the reply, if one is due, to `reply`. kDisconnect: the front-end
  // broke the protocol in a way that leaves it waiting for an answer we cannot
  // give; drop the connection.
  Outcome handle(Message message, std::vector<uint8_t>& reply);

  // Stops every ring (device.on_queue_stopped first), then tells the device the
  // front-end is gone and releases memory and eventfds. Idempotent.
  void shutdown();

  [[nodiscard]] uint64_t offered_features() const { return offered_features_; }
  [[nodiscard]] uint64_t acked_features() const { return acked_features_; }
  [[nodiscard]] uint64_t acked_protocol_features() const { return acked_protocol_features_; }
  [[nodiscard]] bool ring_started(uint16_t index) const { return index < vrings_.size() && vrings_[index].started; }
  [[nodiscard]] const std::shared_ptr<const memory::GuestMemory>& guest_memory() const { return memory_; }

 private:
  enum class Result { kOk, kFailed, kFatal };

  struct Vring {
    uint16_t size = 0;
    bool has_address = false;
    VringAddress address;
    // Where to resume (RingQueues::set_base); none: the layout's initial base.
    std::optional<uint32_t> base;
    bool fresh = true;  // next start resets the queue's indices (new base, size or layout)
    bool enabled = false;
    bool started = false;
    // Where the ring stopped, to tell a resume (stop/cont) from a fresh start.
    struct StopPoint {
      VringAddress address;
      uint16_t size = 0;
      uint32_t base = 0;
      uint64_t features = 0;
    };
    std::optional<StopPoint> stopped_at;
    base::UniqueFd kick;
    base::UniqueFd err;
    RingQueues queues;  // split or packed per the features; the queue owns the call fd
  };

  Result dispatch(Message& message, std::vector<uint8_t>& reply);
  [[nodiscard]] bool resumes_where_it_stopped(const Vring& ring) const;
  // Requests we never accept: logs why.
  Result refuse(const Message& message);
  Result handle_set_features(const Message& message);
  // SET_FEATURES acked bits we never offered: stop every ring, say why.
  void refuse_features(uint64_t features);
  Result handle_set_protocol_features(const Message& message);
  Result handle_set_mem_table(Message& message);
  Result handle_set_vring_num(const Message& message);
  Result handle_set_vring_addr(const Message& message);
  Result handle_set_vring_base(const Message& message);
  Result handle_get_vring_base(const Message& message, std::vector<uint8_t>& reply);
  Result handle_vring_fd(Message& message);
  Result handle_set_vring_enable(const Message& message);
  Result handle_get_config(const Message& message, std::vector<uint8_t>& reply);
  void reset_owner();

  // A ring index from a message; nullopt (after a warning) if out of range.
  std::optional<uint16_t> ring_index(uint64_t index, const Message& message);
  // A vring-state payload (SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE) naming
  // one of our rings; nullopt on a wrong size or (after a warning) a bad ring.
  struct RingState {
    uint16_t index;
    uint32_t num;
  };
  std::optional<RingState> ring_state(const Message& message);
  [[nodiscard]] bool protocol_features_negotiated() const { return (acked_features_ & kFeatureProtocolFeatures) != 0; }
  [[nodiscard]] uint16_t ring_count() const { return static_cast<uint16_t>(vrings_.size()); }
  [[nodiscard]] bool should_run(const Vring& ring) const;
  // Starts or stops ring `index` to match its configuration.
  void reconcile(uint16_t index);
  void start(uint16_t index);
  void stop(uint16_t index);
  void on_kick(uint16_t index, uint32_t events);
  void signal_error(uint16_t index);
  void forget_ring(Vring& ring);
  // One info line per ring the front-end set up: its QueueStats since the
  // ring last started from a new base.
  void log_queue_stats() const;

  // Warnings about front-end misbehaviour; after kMaxProtocolWarnings per
  // session they drop to debug level, so a hostile front-end cannot flood the log.
  template <typename... Args>
  void protocol_warning(fmt::format_string<Args...> format, Args&&... args) {
    if (protocol_warnings_ >= kMaxProtocolWarnings) {
      spdlog::debug(format, std::forward<Args>(args)...);
      return;
    }
    spdlog::warn(format, std::forward<Args>(args)...);
    if (++protocol_warnings_ == kMaxProtocolWarnings) {
      spdlog::warn("vhost-user {}: further protocol warnings for this front-end are logged at debug level", name_);
    }
  }
  static constexpr int kMaxProtocolWarnings = 64;

  base::EventLoop& loop_;
  Device& device_;
  ServerStats& stats_;
  std::string name_;
  uint64_t offered_features_ = 0;
  uint64_t acked_features_ = 0;
  uint64_t acked_protocol_features_ = 0;
  bool owner_set_ = false;
  bool features_refused_ = false;  // the last SET_FEATURES acked unoffered bits: no ring runs
  bool shut_down_ = false;
  int protocol_warnings_ = 0;
  std::shared_ptr<const memory::GuestMemory> memory_;
  std::vector<Vring> vrings_;  // sized once: the device holds references into it
};

}  // namespace vhost_vsock::vhost_user
