// Feeds random bytes in random pieces to the CONNECT line reader and checks it
// agrees with the one-shot parser, honours the limit, and keeps every byte
// after the newline.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "fuzz_check.h"
#include "vsock/transport/connect_line.h"

using namespace vhost_vsock::vsock;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t max_line = 1 + data[0] % 80;
  const size_t piece = 1 + data[1] % 16;
  const uint8_t* text = data + 2;
  const size_t text_size = size - 2;

  ConnectLineReader reader(max_line);
  size_t fed = 0;
  auto status = ConnectLineReader::Status::kNeedMore;
  while (fed < text_size && status == ConnectLineReader::Status::kNeedMore) {
    const size_t n = std::min(piece, text_size - fed);
    status = reader.feed(std::span(text + fed, n));
    fed += n;
  }

  const uint8_t* newline = std::find(text, text + text_size, '\n');
  const bool has_newline = newline != text + text_size;
  const size_t line_bytes = static_cast<size_t>(newline - text) + (has_newline ? 1 : 0);
  if (line_bytes > max_line) {
    CHECK(status == ConnectLineReader::Status::kTooLong);
    return 0;
  }
  if (!has_newline) {
    CHECK(status == ConnectLineReader::Status::kNeedMore);
    return 0;
  }
  const auto expected = parse_connect_line(std::string_view(reinterpret_cast<const char*>(text), line_bytes - 1));
  if (!expected) {
    CHECK(status == ConnectLineReader::Status::kMalformed);
    return 0;
  }
  CHECK(status == ConnectLineReader::Status::kDone);
  CHECK(reader.port() == *expected);
  // Leftover is exactly the rest of the piece that held the newline.
  const size_t leftover_expected = fed - line_bytes;
  CHECK(reader.leftover().size() == leftover_expected);
  CHECK(std::equal(reader.leftover().begin(), reader.leftover().end(), text + line_bytes));
  return 0;
}
