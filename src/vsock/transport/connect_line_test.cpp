#include "vsock/transport/connect_line.h"

#include <gtest/gtest.h>

#include <string>

namespace vhost_vsock::vsock {
namespace {

std::span<const uint8_t> as_bytes(const std::string& s) {
  return std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

TEST(ParseConnectLine, AcceptsAnyLetterCaseAndOptionalCr) {
  EXPECT_EQ(parse_connect_line("CONNECT 1234"), 1234u);
  EXPECT_EQ(parse_connect_line("connect 1234"), 1234u);
  EXPECT_EQ(parse_connect_line("Connect 1234"), 1234u);
  EXPECT_EQ(parse_connect_line("cOnNeCt 0"), 0u);
  EXPECT_EQ(parse_connect_line("CONNECT 52\r"), 52u);
  EXPECT_EQ(parse_connect_line("CONNECT 4294967295"), 4294967295u);
  EXPECT_EQ(parse_connect_line("CONNECT 0000001"), 1u);
}

TEST(ParseConnectLine, RejectsGarbage) {
  for (const char* bad :
       {"", "CONNECT", "CONNECT ", "CONNECT  1", " CONNECT 1", "CONNECT 1 ", "CONNECT\t1", "CONNECT -1", "CONNECT +1",
        "CONNECT 1a", "CONNECT 0x10", "CONNECT 4294967296", "CONNECT 99999999999", "CONNEC 1", "CONNECTX 1",
        "CONNECT 1\r\r", "\rCONNECT 1", "KONNECT 1"}) {
    EXPECT_FALSE(parse_connect_line(bad)) << '"' << bad << '"';
  }
  EXPECT_FALSE(parse_connect_line(std::string_view("CONNECT 1\0", 10)));
  EXPECT_FALSE(
      parse_connect_line(std::string_view("CONNECT \0"
                                          "1",
                                          10)));
}

TEST(ConnectLineReader, WholeLineInOneRead) {
  ConnectLineReader reader(64);
  EXPECT_EQ(reader.feed(as_bytes("CONNECT 1234\n")), ConnectLineReader::Status::kDone);
  EXPECT_EQ(reader.port(), 1234u);
  EXPECT_TRUE(reader.leftover().empty());
}

TEST(ConnectLineReader, LineInPiecesByteByByte) {
  const std::string line = "connect 77\r\n";
  ConnectLineReader reader(64);
  for (size_t i = 0; i + 1 < line.size(); ++i) {
    EXPECT_EQ(reader.feed(as_bytes(line.substr(i, 1))), ConnectLineReader::Status::kNeedMore) << i;
  }
  EXPECT_EQ(reader.feed(as_bytes("\n")), ConnectLineReader::Status::kDone);
  EXPECT_EQ(reader.port(), 77u);
}

TEST(ConnectLineReader, BytesAfterTheNewlineAreKept) {
  ConnectLineReader reader(64);
  EXPECT_EQ(reader.feed(as_bytes("CONN")), ConnectLineReader::Status::kNeedMore);
  EXPECT_EQ(reader.feed(as_bytes("ECT 9\nhello\nworld")), ConnectLineReader::Status::kDone);
  EXPECT_EQ(reader.port(), 9u);
  EXPECT_EQ(std::string(reader.leftover().begin(), reader.leftover().end()), "hello\nworld");
}

TEST(ConnectLineReader, LimitIncludesTheNewline) {
  const std::string line = "CONNECT 12345\n";  // 14 bytes
  ConnectLineReader exact(line.size());
  EXPECT_EQ(exact.feed(as_bytes(line)), ConnectLineReader::Status::kDone);
  ConnectLineReader short_by_one(line.size() - 1);
  EXPECT_EQ(short_by_one.feed(as_bytes(line)), ConnectLineReader::Status::kTooLong);
}

TEST(ConnectLineReader, OverlongLineWithoutNewlineFailsOnceLimitPassed) {
  ConnectLineReader reader(16);
  EXPECT_EQ(reader.feed(as_bytes("CONNECT 00000")), ConnectLineReader::Status::kNeedMore);
  EXPECT_EQ(reader.room(), 3u);
  EXPECT_EQ(reader.feed(as_bytes("000")), ConnectLineReader::Status::kNeedMore);
  EXPECT_EQ(reader.room(), 0u);
  EXPECT_EQ(reader.feed(as_bytes("0")), ConnectLineReader::Status::kTooLong);
  // Sticky.
  EXPECT_EQ(reader.feed(as_bytes("\n")), ConnectLineReader::Status::kTooLong);
}

TEST(ConnectLineReader, MalformedLineIsReportedAtTheNewline) {
  ConnectLineReader reader(64);
  EXPECT_EQ(reader.feed(as_bytes("GET / HTTP/1.1")), ConnectLineReader::Status::kNeedMore);
  EXPECT_EQ(reader.feed(as_bytes("\r\n")), ConnectLineReader::Status::kMalformed);
  EXPECT_EQ(reader.feed(as_bytes("CONNECT 1\n")), ConnectLineReader::Status::kMalformed);
}

TEST(ConnectLineReader, EmptyFeedChangesNothing) {
  ConnectLineReader reader(64);
  EXPECT_EQ(reader.feed({}), ConnectLineReader::Status::kNeedMore);
  EXPECT_EQ(reader.feed(as_bytes("\n")), ConnectLineReader::Status::kMalformed);
}

}  // namespace
}  // namespace vhost_vsock::vsock
