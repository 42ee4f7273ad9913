#include "vsock/packet/packet.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace vhost_vsock::vsock {
namespace {

PacketHeader sample_header(uint32_t len) {
  PacketHeader h;
  h.src_cid = 3;
  h.dst_cid = 2;
  h.src_port = 1234;
  h.dst_port = 5000;
  h.len = len;
  h.type = static_cast<uint16_t>(SocketType::kStream);
  h.op = static_cast<uint16_t>(Op::kRw);
  h.buf_alloc = 65536;
  h.fwd_cnt = 77;
  return h;
}

// A packet serialized into one flat buffer, then cut into iovecs at `cuts`.
struct SplitPacket {
  std::vector<uint8_t> bytes;
  std::vector<iovec> iovs;
  SplitPacket(const PacketHeader& h, size_t payload_bytes, std::vector<size_t> cuts) {
    auto hb = encode_header(h);
    bytes.assign(hb.begin(), hb.end());
    for (size_t i = 0; i < payload_bytes; ++i) bytes.push_back(static_cast<uint8_t>(i * 7 + 1));
    size_t start = 0;
    cuts.push_back(bytes.size());
    for (size_t cut : cuts) {
      iovs.push_back(iovec{bytes.data() + start, cut - start});
      start = cut;
    }
  }
};

std::vector<uint8_t> flatten(const base::IovecList& list) {
  std::vector<uint8_t> out(list.total_bytes());
  base::copy_from_iovecs(list.span(), 0, out);
  return out;
}

TEST(TxParse, HeaderAndPayloadInOneBuffer) {
  SplitPacket p(sample_header(10), 10, {});
  TxPacket out;
  ASSERT_EQ(parse_tx_packet(p.iovs, out), TxParseStatus::kOk);
  EXPECT_EQ(out.header, sample_header(10));
  auto payload = flatten(out.payload);
  EXPECT_EQ(payload, std::vector<uint8_t>(p.bytes.begin() + kHeaderSize, p.bytes.end()));
}

TEST(TxParse, HeaderSplitAcrossEveryPossibleBoundary) {
  for (size_t cut = 1; cut < kHeaderSize + 5; ++cut) {
    SplitPacket p(sample_header(5), 5, {cut});
    TxPacket out;
    ASSERT_EQ(parse_tx_packet(p.iovs, out), TxParseStatus::kOk) << cut;
    EXPECT_EQ(out.header, sample_header(5)) << cut;
    EXPECT_EQ(flatten(out.payload), std::vector<uint8_t>(p.bytes.begin() + kHeaderSize, p.bytes.end())) << cut;
  }
}

TEST(TxParse, ByteByByteDescriptors) {
  std::vector<size_t> cuts(kHeaderSize + 19);
  std::iota(cuts.begin(), cuts.end(), 1);
  SplitPacket p(sample_header(20), 20, cuts);
  TxPacket out;
  ASSERT_EQ(parse_tx_packet(p.iovs, out), TxParseStatus::kOk);
  EXPECT_EQ(out.payload.size(), 20u);
  EXPECT_EQ(flatten(out.payload), std::vector<uint8_t>(p.bytes.begin() + kHeaderSize, p.bytes.end()));
}

TEST(TxParse, PayloadPointsIntoGuestMemoryWithoutCopy) {
  SplitPacket p(sample_header(8), 8, {kHeaderSize});
  TxPacket out;
  ASSERT_EQ(parse_tx_packet(p.iovs, out), TxParseStatus::kOk);
  ASSERT_EQ(out.payload.size(), 1u);
  EXPECT_EQ(out.payload[0].iov_base, p.bytes.data() + kHeaderSize);
}

TEST(TxParse, ShortHeaderIsRejected) {
  SplitPacket p(sample_header(0), 0, {});
  p.iovs.back().iov_len = kHeaderSize - 1;
  TxPacket out;
  EXPECT_EQ(parse_tx_packet(p.iovs, out), TxParseStatus::kShortHeader);
  EXPECT_TRUE(out.payload.empty());
  EXPECT_EQ(parse_tx_packet({}, out), TxParseStatus::kShortHeader);
}

TEST(TxParse, OversizedLengthIsRejectedBeforeLookingForPayload) {
  SplitPacket p(sample_header(kMaxPacketPayload + 1), 16, {});
  TxPacket out;
  EXPECT_EQ(parse_tx_packet(p.iovs, out), TxParseStatus::kPayloadTooLarge);
  EXPECT_EQ(out.header.len, kMaxPacketPayload + 1);  // kept so the caller can RST the sender
  EXPECT_TRUE(out.payload.empty());
}

TEST(TxParse, LengthBeyondBytesPresentIsRejected) {
  SplitPacket p(sample_header(100), 99, {50});
  TxPacket out;
  EXPECT_EQ(parse_tx_packet(p.iovs, out), TxParseStatus::kTruncatedPayload);
  EXPECT_TRUE(out.payload.empty());
}

TEST(TxParse, TrailingBytesBeyondLenAreIgnored) {
  SplitPacket p(sample_header(4), 30, {kHeaderSize + 2});
  TxPacket out;
  ASSERT_EQ(parse_tx_packet(p.iovs, out), TxParseStatus::kOk);
  EXPECT_EQ(out.payload.total_bytes(), 4u);
}

TEST(TxParse, MaximumPayloadAccepted) {
  SplitPacket p(sample_header(kMaxPacketPayload), kMaxPacketPayload, {kHeaderSize, 4096, 60000});
  TxPacket out;
  ASSERT_EQ(parse_tx_packet(p.iovs, out), TxParseStatus::kOk);
  EXPECT_EQ(out.payload.total_bytes(), kMaxPacketPayload);
}

// virtio 1.2 §5.10.6: every field little-endian at a fixed offset.
TEST(Header, WireLayoutIsLittleEndianAtTheSpecOffsets) {
  const PacketHeader h{.src_cid = 0x0102030405060708,
                       .dst_cid = 0x1112131415161718,
                       .src_port = 0x21222324,
                       .dst_port = 0x31323334,
                       .len = 0x41424344,
                       .type = 0x5152,
                       .op = 0x6162,
                       .flags = 0x71727374,
                       .buf_alloc = 0x81828384,
                       .fwd_cnt = 0x91929394};
  const HeaderBytes expected{0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12,
                             0x11, 0x24, 0x23, 0x22, 0x21, 0x34, 0x33, 0x32, 0x31, 0x44, 0x43, 0x42, 0x41, 0x52, 0x51,
                             0x62, 0x61, 0x74, 0x73, 0x72, 0x71, 0x84, 0x83, 0x82, 0x81, 0x94, 0x93, 0x92, 0x91};
  EXPECT_EQ(encode_header(h), expected);
  EXPECT_EQ(decode_header(expected), h);
}

TEST(RxWrite, HeaderInOneBufferLeavesThePayloadAlone) {
  std::vector<uint8_t> buffer(kHeaderSize + 8, 0xEE);
  std::vector<iovec> iovs{{buffer.data(), buffer.size()}};
  const auto h = sample_header(8);
  ASSERT_TRUE(write_rx_header(iovs, h));
  HeaderBytes hb{};
  std::copy_n(buffer.begin(), kHeaderSize, hb.begin());
  EXPECT_EQ(decode_header(hb), h);
  EXPECT_EQ(std::vector<uint8_t>(buffer.begin() + kHeaderSize, buffer.end()), std::vector<uint8_t>(8, 0xEE));
}

TEST(RxWrite, HeaderSplitAcrossBuffers) {
  std::vector<uint8_t> a(10, 0xEE), b(40, 0xEE), c(100, 0xEE);
  std::vector<iovec> iovs{{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
  auto h = sample_header(3);
  ASSERT_TRUE(write_rx_header(iovs, h));
  std::vector<uint8_t> joined(a);
  joined.insert(joined.end(), b.begin(), b.end());
  joined.insert(joined.end(), c.begin(), c.begin() + 10);
  HeaderBytes hb{};
  std::copy_n(joined.begin(), kHeaderSize, hb.begin());
  EXPECT_EQ(decode_header(hb), h);
  EXPECT_EQ(b[kHeaderSize - 10], 0xEE);  // the byte after the header is untouched
  EXPECT_EQ(c[0], 0xEE);
}

TEST(RxWrite, TooSmallChainIsLeftUntouched) {
  std::vector<uint8_t> a(20, 0xEE), b(23, 0xEE);
  std::vector<iovec> iovs{{a.data(), a.size()}, {b.data(), b.size()}};
  EXPECT_FALSE(write_rx_header(iovs, sample_header(0)));
  EXPECT_EQ(a, std::vector<uint8_t>(20, 0xEE));
  EXPECT_EQ(b, std::vector<uint8_t>(23, 0xEE));
}

TEST(RxWrite, PayloadAreaStartsAfterHeaderAndIsCapped) {
  std::vector<uint8_t> a(kHeaderSize + 6), b(4096);
  std::vector<iovec> iovs{{a.data(), a.size()}, {b.data(), b.size()}};
  base::IovecList area;
  rx_payload_area(iovs, 100, area);
  ASSERT_EQ(area.size(), 2u);
  EXPECT_EQ(area[0].iov_base, a.data() + kHeaderSize);
  EXPECT_EQ(area[0].iov_len, 6u);
  EXPECT_EQ(area.total_bytes(), 100u);
  EXPECT_EQ(rx_payload_capacity(kHeaderSize - 1), 0u);
  EXPECT_EQ(rx_payload_capacity(kHeaderSize + 4096), 4096u);
  EXPECT_EQ(rx_payload_capacity(kHeaderSize + kMaxPacketPayload + 10), kMaxPacketPayload);
}

}  // namespace
}  // namespace vhost_vsock::vsock
