// Parses a TX packet laid out over a random split into descriptors, and checks
// the parser's promises: the header is what the first 44 bytes say, the
// payload is exactly header.len bytes of what follows, errors are exact.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz_check.h"
#include "vsock/packet/packet.h"

using namespace vhost_vsock;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  // First byte: number of cuts; then one byte per cut (a segment length).
  const size_t cuts = data[0] % 16;
  if (size < 1 + cuts) return 0;
  const uint8_t* cut_lengths = data + 1;
  const uint8_t* packet = data + 1 + cuts;
  const size_t packet_size = size - 1 - cuts;

  // Each segment is its own heap allocation so ASan catches any overread.
  std::vector<std::vector<uint8_t>> segments;
  size_t offset = 0;
  for (size_t i = 0; i <= cuts && offset <= packet_size; ++i) {
    size_t len = i == cuts ? packet_size - offset : std::min<size_t>(cut_lengths[i], packet_size - offset);
    segments.emplace_back(packet + offset, packet + offset + len);
    offset += len;
  }
  std::vector<iovec> iovs;
  for (auto& s : segments) iovs.push_back(iovec{s.data(), s.size()});

  vsock::TxPacket out;
  const auto status = vsock::parse_tx_packet(iovs, out);
  if (packet_size < vsock::kHeaderSize) {
    CHECK(status == vsock::TxParseStatus::kShortHeader);
    return 0;
  }
  vsock::HeaderBytes header_bytes;
  std::memcpy(header_bytes.data(), packet, vsock::kHeaderSize);
  CHECK(out.header == vsock::decode_header(header_bytes));
  CHECK(vsock::encode_header(out.header) == header_bytes);  // decode/encode round-trip
  const uint32_t len = out.header.len;
  if (len > vsock::kMaxPacketPayload) {
    CHECK(status == vsock::TxParseStatus::kPayloadTooLarge);
  } else if (len > packet_size - vsock::kHeaderSize) {
    CHECK(status == vsock::TxParseStatus::kTruncatedPayload);
  } else {
    CHECK(status == vsock::TxParseStatus::kOk);
    CHECK(out.payload.total_bytes() == len);
    std::vector<uint8_t> flat(len);
    CHECK(base::copy_from_iovecs(out.payload.span(), 0, flat) == len);
    CHECK(len == 0 || std::memcmp(flat.data(), packet + vsock::kHeaderSize, len) == 0);
  }
  if (status != vsock::TxParseStatus::kOk) CHECK(out.payload.empty());

  // Writing it back as an RX header into the same split lands in the first 44 bytes.
  if (vsock::write_rx_header(iovs, out.header)) {
    std::vector<uint8_t> flat(vsock::kHeaderSize);
    base::copy_from_iovecs(iovs, 0, flat);
    CHECK(std::memcmp(flat.data(), header_bytes.data(), vsock::kHeaderSize) == 0);
  }
  return 0;
}
