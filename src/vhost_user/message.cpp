#include "vhost_user/message.h"

#include <fmt/format.h>

#include <cstring>

namespace vhost_vsock::vhost_user {
namespace {

template <typename T>
T load(std::span<const uint8_t> bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

template <typename T>
void store(std::vector<uint8_t>& out, T value) {
  const size_t offset = out.size();
  out.resize(offset + sizeof(T));
  std::memcpy(out.data() + offset, &value, sizeof(T));
}

void append_header(std::vector<uint8_t>& out, uint32_t request, uint32_t flags, uint32_t size) {
  store(out, request);
  store(out, flags);
  store(out, size);
}

}  // namespace

std::string_view request_name(uint32_t request) {
  switch (static_cast<Request>(request)) {
    case Request::kGetFeatures:
      return "GET_FEATURES";
    case Request::kSetFeatures:
      return "SET_FEATURES";
    case Request::kSetOwner:
      return "SET_OWNER";
    case Request::kResetOwner:
      return "RESET_OWNER";
    case Request::kSetMemTable:
      return "SET_MEM_TABLE";
    case Request::kSetLogBase:
      return "SET_LOG_BASE";
    case Request::kSetLogFd:
      return "SET_LOG_FD";
    case Request::kSetVringNum:
      return "SET_VRING_NUM";
    case Request::kSetVringAddr:
      return "SET_VRING_ADDR";
    case Request::kSetVringBase:
      return "SET_VRING_BASE";
    case Request::kGetVringBase:
      return "GET_VRING_BASE";
    case Request::kSetVringKick:
      return "SET_VRING_KICK";
    case Request::kSetVringCall:
      return "SET_VRING_CALL";
    case Request::kSetVringErr:
      return "SET_VRING_ERR";
    case Request::kGetProtocolFeatures:
      return "GET_PROTOCOL_FEATURES";
    case Request::kSetProtocolFeatures:
      return "SET_PROTOCOL_FEATURES";
    case Request::kGetQueueNum:
      return "GET_QUEUE_NUM";
    case Request::kSetVringEnable:
      return "SET_VRING_ENABLE";
    case Request::kGetConfig:
      return "GET_CONFIG";
    case Request::kSetConfig:
      return "SET_CONFIG";
    case Request::kGetMaxMemSlots:
      return "GET_MAX_MEM_SLOTS";
  }
  return "UNKNOWN";
}

std::span<uint8_t> MessageAssembler::next_read_area() {
  if (complete_) return {};
  if (filled_ < kHeaderSize) return std::span<uint8_t>(header_bytes_).subspan(filled_);
  return std::span<uint8_t>(payload_).subspan(filled_ - kHeaderSize);
}

MessageAssembler::Status MessageAssembler::commit(size_t count, std::string* error) {
  if (complete_ || count > next_read_area().size()) {
    *error = "internal: commit beyond the read area";
    return Status::kError;
  }
  size_t before = filled_;
  filled_ += count;
  if (filled_ < kHeaderSize) return Status::kNeedMore;
  if (before < kHeaderSize) {
    header_ = decode_header(header_bytes_);
    if ((header_.flags & kFlagVersionMask) != kFlagVersion) {
      *error = fmt::format("{} (request {}) has protocol version {}, expected {}", request_name(header_.request),
                           header_.request, header_.flags & kFlagVersionMask, kFlagVersion);
      return Status::kError;
    }
    if ((header_.flags & kFlagReply) != 0) {
      *error = fmt::format("{} (request {}) carries the reply flag", request_name(header_.request), header_.request);
      return Status::kError;
    }
    if (header_.size > kMaxPayloadSize) {
      *error = fmt::format("{} (request {}) payload of {} bytes exceeds the {}-byte cap", request_name(header_.request),
                           header_.request, header_.size, kMaxPayloadSize);
      return Status::kError;
    }
    payload_.assign(header_.size, 0);
  }
  if (filled_ == kHeaderSize + header_.size) {
    complete_ = true;
    return Status::kComplete;
  }
  return Status::kNeedMore;
}

bool MessageAssembler::add_fd(base::UniqueFd fd, std::string* error) {
  if (fds_.size() >= kMaxFdsPerMessage) {
    *error = fmt::format("more than {} file descriptors in one message", kMaxFdsPerMessage);
    return false;  // `fd` closes here
  }
  fds_.push_back(std::move(fd));
  return true;
}

Message MessageAssembler::take() {
  Message message;
  if (!complete_) return message;
  message.header = header_;
  message.payload = std::move(payload_);
  message.fds = std::move(fds_);
  payload_.clear();
  fds_.clear();
  filled_ = 0;
  complete_ = false;
  return message;
}

MessageHeader decode_header(std::span<const uint8_t, kHeaderSize> bytes) {
  std::span<const uint8_t> view(bytes);
  return MessageHeader{load<uint32_t>(view, 0), load<uint32_t>(view, 4), load<uint32_t>(view, 8)};
}

std::optional<uint64_t> decode_u64(std::span<const uint8_t> payload) {
  if (payload.size() != sizeof(uint64_t)) return std::nullopt;
  return load<uint64_t>(payload, 0);
}

std::optional<VringState> decode_vring_state(std::span<const uint8_t> payload) {
  if (payload.size() != 8) return std::nullopt;
  return VringState{load<uint32_t>(payload, 0), load<uint32_t>(payload, 4)};
}

std::optional<VringAddress> decode_vring_address(std::span<const uint8_t> payload) {
  if (payload.size() != kVringAddressSize) return std::nullopt;
  VringAddress address;
  address.index = load<uint32_t>(payload, 0);
  address.flags = load<uint32_t>(payload, 4);
  address.desc_user_addr = load<uint64_t>(payload, 8);
  address.used_user_addr = load<uint64_t>(payload, 16);
  address.avail_user_addr = load<uint64_t>(payload, 24);
  address.log_guest_addr = load<uint64_t>(payload, 32);
  return address;
}

std::optional<std::vector<MemoryRegionDescription>> decode_memory_table(std::span<const uint8_t> payload,
                                                                        std::string* error) {
  if (payload.size() < 8) {
    *error = fmt::format("memory table payload of {} bytes is shorter than its 8-byte header", payload.size());
    return std::nullopt;
  }
  uint32_t count = load<uint32_t>(payload, 0);
  if (count == 0 || count > kMaxMemoryRegions) {
    *error = fmt::format("memory table has {} regions, expected 1..{}", count, kMaxMemoryRegions);
    return std::nullopt;
  }
  size_t expected = 8 + size_t{count} * kMemoryRegionSize;
  if (payload.size() != expected) {
    *error = fmt::format("memory table with {} regions is {} bytes, expected {}", count, payload.size(), expected);
    return std::nullopt;
  }
  std::vector<MemoryRegionDescription> regions(count);
  for (uint32_t i = 0; i < count; ++i) {
    size_t base = 8 + size_t{i} * kMemoryRegionSize;
    regions[i].guest_phys_addr = load<uint64_t>(payload, base);
    regions[i].size = load<uint64_t>(payload, base + 8);
    regions[i].user_addr = load<uint64_t>(payload, base + 16);
    regions[i].mmap_offset = load<uint64_t>(payload, base + 24);
  }
  return regions;
}

std::optional<ConfigAccess> decode_config_access(std::span<const uint8_t> payload, std::string* error) {
  if (payload.size() < kConfigHeaderSize) {
    *error =
        fmt::format("config payload of {} bytes is shorter than its {}-byte header", payload.size(), kConfigHeaderSize);
    return std::nullopt;
  }
  ConfigAccess access;
  access.offset = load<uint32_t>(payload, 0);
  access.size = load<uint32_t>(payload, 4);
  access.flags = load<uint32_t>(payload, 8);
  if (access.size > kMaxConfigSize || payload.size() != kConfigHeaderSize + access.size) {
    *error = fmt::format("config access of {} bytes in a {}-byte payload (max {})", access.size, payload.size(),
                         kMaxConfigSize);
    return std::nullopt;
  }
  access.data = payload.subspan(kConfigHeaderSize);
  return access;
}

void append_reply(std::vector<uint8_t>& out, uint32_t request, std::span<const uint8_t> payload) {
  append_header(out, request, kFlagVersion | kFlagReply, static_cast<uint32_t>(payload.size()));
  out.insert(out.end(), payload.begin(), payload.end());
}

void append_reply_u64(std::vector<uint8_t>& out, uint32_t request, uint64_t value) {
  append_header(out, request, kFlagVersion | kFlagReply, sizeof(value));
  store(out, value);
}

void append_reply_vring_state(std::vector<uint8_t>& out, uint32_t request, VringState state) {
  append_header(out, request, kFlagVersion | kFlagReply, 8);
  store(out, state.index);
  store(out, state.num);
}

void append_reply_config(std::vector<uint8_t>& out, const ConfigAccess& access, std::span<const uint8_t> bytes) {
  uint32_t request = static_cast<uint32_t>(Request::kGetConfig);
  if (bytes.empty()) {
    append_header(out, request, kFlagVersion | kFlagReply, 0);
    return;
  }
  append_header(out, request, kFlagVersion | kFlagReply, static_cast<uint32_t>(kConfigHeaderSize + bytes.size()));
  store(out, access.offset);
  store(out, static_cast<uint32_t>(bytes.size()));
  store(out, access.flags);
  out.insert(out.end(), bytes.begin(), bytes.end());
}

std::vector<uint8_t> encode_message(uint32_t request, uint32_t flags, std::span<const uint8_t> payload) {
  std::vector<uint8_t> out;
  out.reserve(kHeaderSize + payload.size());
  append_header(out, request, flags, static_cast<uint32_t>(payload.size()));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::vector<uint8_t> encode_u64(uint64_t value) {
  std::vector<uint8_t> out;
  store(out, value);
  return out;
}

std::vector<uint8_t> encode_vring_state(VringState state) {
  std::vector<uint8_t> out;
  store(out, state.index);
  store(out, state.num);
  return out;
}

std::vector<uint8_t> encode_vring_address(const VringAddress& address) {
  std::vector<uint8_t> out;
  store(out, address.index);
  store(out, address.flags);
  store(out, address.desc_user_addr);
  store(out, address.used_user_addr);
  store(out, address.avail_user_addr);
  store(out, address.log_guest_addr);
  return out;
}

std::vector<uint8_t> encode_memory_table(std::span<const MemoryRegionDescription> regions) {
  std::vector<uint8_t> out;
  store(out, static_cast<uint32_t>(regions.size()));
  store(out, uint32_t{0});
  for (const auto& region : regions) {
    store(out, region.guest_phys_addr);
    store(out, region.size);
    store(out, region.user_addr);
    store(out, region.mmap_offset);
  }
  return out;
}

std::vector<uint8_t> encode_config_access(uint32_t offset, uint32_t size, uint32_t flags,
                                          std::span<const uint8_t> data) {
  std::vector<uint8_t> out;
  store(out, offset);
  store(out, size);
  store(out, flags);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

}  // namespace vhost_vsock::vhost_user
