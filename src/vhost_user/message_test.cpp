#include "vhost_user/message.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cstring>

namespace vhost_vsock::vhost_user {
namespace {

// Feeds `bytes` to the assembler in chunks of `chunk` bytes; returns the
// completed messages and stops at the first error.
std::vector<Message> feed(MessageAssembler& assembler, const std::vector<uint8_t>& bytes, size_t chunk,
                          bool* error_seen = nullptr) {
  std::vector<Message> messages;
  size_t offset = 0;
  std::string error;
  while (offset < bytes.size()) {
    auto area = assembler.next_read_area();
    size_t n = std::min({area.size(), chunk, bytes.size() - offset});
    std::copy_n(bytes.begin() + static_cast<std::ptrdiff_t>(offset), n, area.begin());
    offset += n;
    auto status = assembler.commit(n, &error);
    if (status == MessageAssembler::Status::kError) {
      if (error_seen != nullptr) *error_seen = true;
      return messages;
    }
    if (status == MessageAssembler::Status::kComplete) messages.push_back(assembler.take());
  }
  return messages;
}

TEST(MessageAssembler, ReassemblesMessagesDeliveredByteByByte) {
  auto first = encode_message(static_cast<uint32_t>(Request::kSetFeatures), kFlagVersion, encode_u64(0x1234));
  auto second = encode_message(static_cast<uint32_t>(Request::kGetFeatures), kFlagVersion | kFlagNeedReply, {});
  std::vector<uint8_t> stream = first;
  stream.insert(stream.end(), second.begin(), second.end());

  MessageAssembler assembler;
  auto messages = feed(assembler, stream, 1);
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].header.request, 2u);
  EXPECT_EQ(decode_u64(messages[0].payload), 0x1234u);
  EXPECT_EQ(messages[1].header.request, 1u);
  EXPECT_TRUE(messages[1].header.need_reply());
  EXPECT_TRUE(messages[1].payload.empty());
  EXPECT_FALSE(assembler.mid_message());
}

TEST(MessageAssembler, ReadAreaNeverCrossesIntoTheNextMessage) {
  MessageAssembler assembler;
  EXPECT_EQ(assembler.next_read_area().size(), kHeaderSize);
  auto bytes = encode_message(8, kFlagVersion, encode_vring_state({1, 256}));
  auto area = assembler.next_read_area();
  std::copy_n(bytes.begin(), kHeaderSize, area.begin());
  std::string error;
  ASSERT_EQ(assembler.commit(kHeaderSize, &error), MessageAssembler::Status::kNeedMore);
  EXPECT_EQ(assembler.next_read_area().size(), 8u);  // exactly the payload
}

TEST(MessageAssembler, RejectsOversizedPayloadBadVersionAndReplyFlag) {
  {
    std::vector<uint8_t> payload(kMaxPayloadSize + 1);
    bool error = false;
    MessageAssembler assembler;
    auto messages = feed(assembler, encode_message(5, kFlagVersion, payload), 4096, &error);
    EXPECT_TRUE(error);
    EXPECT_TRUE(messages.empty());
  }
  {
    bool error = false;
    MessageAssembler assembler;
    feed(assembler, encode_message(1, 0x2, {}), 64, &error);
    EXPECT_TRUE(error);
  }
  {
    bool error = false;
    MessageAssembler assembler;
    feed(assembler, encode_message(1, kFlagVersion | kFlagReply, {}), 64, &error);
    EXPECT_TRUE(error);
  }
  {
    // The largest allowed payload is fine.
    bool error = false;
    MessageAssembler assembler;
    auto messages =
        feed(assembler, encode_message(99, kFlagVersion, std::vector<uint8_t>(kMaxPayloadSize)), 1000, &error);
    EXPECT_FALSE(error);
    EXPECT_EQ(messages.size(), 1u);
  }
}

TEST(MessageAssembler, AttachesFdsToTheCurrentMessageAndCapsThem) {
  MessageAssembler assembler;
  std::string error;
  for (size_t i = 0; i < kMaxFdsPerMessage; ++i) {
    ASSERT_TRUE(assembler.add_fd(base::UniqueFd(::eventfd(0, EFD_CLOEXEC)), &error));
  }
  base::UniqueFd extra(::eventfd(0, EFD_CLOEXEC));
  int extra_number = extra.get();
  EXPECT_FALSE(assembler.add_fd(std::move(extra), &error));
  EXPECT_FALSE(error.empty());
  EXPECT_EQ(::fcntl(extra_number, F_GETFD), -1);  // closed, not leaked
  EXPECT_TRUE(assembler.mid_message());

  auto messages = feed(assembler, encode_message(13, kFlagVersion, encode_u64(0)), 100);
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0].fds.size(), kMaxFdsPerMessage);
  EXPECT_FALSE(assembler.mid_message());
}

TEST(Payloads, DecodeRequiresExactSizes) {
  EXPECT_FALSE(decode_u64(std::vector<uint8_t>(7)));
  EXPECT_FALSE(decode_u64(std::vector<uint8_t>(9)));
  EXPECT_FALSE(decode_vring_state(std::vector<uint8_t>(4)));
  EXPECT_FALSE(decode_vring_address(std::vector<uint8_t>(32)));
  auto state = decode_vring_state(encode_vring_state({3, 77}));
  ASSERT_TRUE(state);
  EXPECT_EQ(state->index, 3u);
  EXPECT_EQ(state->num, 77u);
}

TEST(Payloads, VringAddressFieldOrderIsDescUsedAvail) {
  std::vector<uint8_t> raw(kVringAddressSize);
  auto put = [&](size_t offset, uint64_t value) { std::memcpy(raw.data() + offset, &value, 8); };
  uint32_t index = 1;
  std::memcpy(raw.data(), &index, 4);
  put(8, 0x1000);   // desc
  put(16, 0x2000);  // used
  put(24, 0x3000);  // avail
  put(32, 0x4000);  // log
  auto address = decode_vring_address(raw);
  ASSERT_TRUE(address);
  EXPECT_EQ(address->index, 1u);
  EXPECT_EQ(address->desc_user_addr, 0x1000u);
  EXPECT_EQ(address->used_user_addr, 0x2000u);
  EXPECT_EQ(address->avail_user_addr, 0x3000u);
  EXPECT_EQ(address->log_guest_addr, 0x4000u);
  EXPECT_EQ(encode_vring_address(*address), raw);
}

TEST(Payloads, MemoryTableRoundTripsAndRejectsBadCounts) {
  std::vector<MemoryRegionDescription> regions = {{0x0, 0x10000, 0x7f0000000000, 0},
                                                  {0x100000, 0x20000, 0x7f0000100000, 0x10000}};
  std::string error;
  auto decoded = decode_memory_table(encode_memory_table(regions), &error);
  ASSERT_TRUE(decoded) << error;
  ASSERT_EQ(decoded->size(), 2u);
  EXPECT_EQ((*decoded)[1].guest_phys_addr, 0x100000u);
  EXPECT_EQ((*decoded)[1].size, 0x20000u);
  EXPECT_EQ((*decoded)[1].user_addr, 0x7f0000100000u);
  EXPECT_EQ((*decoded)[1].mmap_offset, 0x10000u);

  EXPECT_FALSE(decode_memory_table(encode_memory_table({}), &error));
  std::vector<MemoryRegionDescription> nine(9, regions[0]);
  EXPECT_FALSE(decode_memory_table(encode_memory_table(nine), &error));
  auto truncated = encode_memory_table(regions);
  truncated.pop_back();
  EXPECT_FALSE(decode_memory_table(truncated, &error));
  // A count that claims more regions than the payload holds.
  auto lying = encode_memory_table(regions);
  lying[0] = 3;
  EXPECT_FALSE(decode_memory_table(lying, &error));
}

TEST(Payloads, ConfigAccessChecksSizeAgainstPayload) {
  std::string error;
  auto access = decode_config_access(encode_config_access(0, 8, 0, std::vector<uint8_t>(8)), &error);
  ASSERT_TRUE(access) << error;
  EXPECT_EQ(access->size, 8u);
  EXPECT_EQ(access->data.size(), 8u);
  EXPECT_FALSE(decode_config_access(encode_config_access(0, 8, 0, std::vector<uint8_t>(4)), &error));
  EXPECT_FALSE(decode_config_access(encode_config_access(0, 300, 0, std::vector<uint8_t>(300)), &error));
  EXPECT_FALSE(decode_config_access(std::vector<uint8_t>(11), &error));
}

TEST(Replies, CarryExactlyVersionAndReplyFlags) {
  std::vector<uint8_t> out;
  append_reply_u64(out, 1, 0xabcdef);
  ASSERT_EQ(out.size(), kHeaderSize + 8);
  auto header = decode_header(std::span<const uint8_t, kHeaderSize>(out.data(), kHeaderSize));
  EXPECT_EQ(header.request, 1u);
  EXPECT_EQ(header.flags, kFlagVersion | kFlagReply);
  EXPECT_EQ(header.size, 8u);
  EXPECT_EQ(decode_u64(std::span<const uint8_t>(out).subspan(kHeaderSize)), 0xabcdefu);

  out.clear();
  ConfigAccess access{4, 2, 0, {}};
  std::vector<uint8_t> bytes = {0xaa, 0xbb};
  append_reply_config(out, access, bytes);
  ASSERT_EQ(out.size(), kHeaderSize + kConfigHeaderSize + 2);
  EXPECT_EQ(out[kHeaderSize], 4);                         // offset echoed
  EXPECT_EQ(out[kHeaderSize + 4], 2);                     // size
  EXPECT_EQ(out[kHeaderSize + kConfigHeaderSize], 0xaa);  // bytes
  EXPECT_EQ(out[kHeaderSize + kConfigHeaderSize + 1], 0xbb);

  out.clear();
  append_reply_config(out, access, {});
  ASSERT_EQ(out.size(), kHeaderSize);  // zero-size payload signals failure
}

TEST(RequestNames, KnownAndUnknown) {
  EXPECT_EQ(request_name(11), "GET_VRING_BASE");
  EXPECT_EQ(request_name(24), "GET_CONFIG");
  EXPECT_EQ(request_name(1000), "UNKNOWN");
}

}  // namespace
}  // namespace vhost_vsock::vhost_user
