#include "vsock/transport/connect_line.h"

#include <algorithm>

namespace vhost_vsock::vsock {
namespace {

constexpr std::string_view kWord = "connect";
constexpr size_t kMaxPortDigits = 10;  // 4294967295

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

}  // namespace

std::optional<uint32_t> parse_connect_line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.size() < kWord.size() + 2) return std::nullopt;
  for (size_t i = 0; i < kWord.size(); ++i) {
    if (lower(line[i]) != kWord[i]) return std::nullopt;
  }
  if (line[kWord.size()] != ' ') return std::nullopt;
  const std::string_view digits = line.substr(kWord.size() + 1);
  if (digits.empty() || digits.size() > kMaxPortDigits) return std::nullopt;
  uint64_t value = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  if (value > UINT32_MAX) return std::nullopt;
  return static_cast<uint32_t>(value);
}

ConnectLineReader::Status ConnectLineReader::feed(std::span<const uint8_t> bytes) {
  if (status_ != Status::kNeedMore) return status_;
  const auto newline = std::find(bytes.begin(), bytes.end(), static_cast<uint8_t>('\n'));
  const size_t line_part = static_cast<size_t>(newline - bytes.begin());
  const bool complete = newline != bytes.end();
  // The limit includes the newline itself.
  if (line_.size() + line_part + (complete ? 1 : 0) > max_line_) {
    status_ = Status::kTooLong;
    return status_;
  }
  line_.insert(line_.end(), bytes.begin(), newline);
  if (!complete) return status_;
  const std::string_view text(reinterpret_cast<const char*>(line_.data()), line_.size());
  if (auto port = parse_connect_line(text)) {
    port_ = *port;
    leftover_.assign(newline + 1, bytes.end());
    status_ = Status::kDone;
  } else {
    status_ = Status::kMalformed;
  }
  return status_;
}

}  // namespace vhost_vsock::vsock
