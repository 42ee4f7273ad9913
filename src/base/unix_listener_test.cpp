#include "base/unix_listener.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/unix_socket_address.h"
#include "testing/temp_dir.h"

namespace vhost_vsock::base {
namespace {

using std::chrono::milliseconds;

class UnixListenerTest : public ::testing::Test {
 protected:
  UnixListener::AcceptCallback collect() {
    return [this](UniqueFd fd) { accepted_.push_back(std::move(fd)); };
  }
  std::string expect_refused(const std::string& path) {
    try {
      UnixListener listener(loop_, path, collect(), UnixListener::Options{.name = "test socket"});
      ADD_FAILURE() << "listening on " << path << " should have been refused";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("test socket '" + path + "'"), std::string::npos) << e.what();
      return e.what();
    }
    return "";
  }
  void run_until_accepted(size_t count) {
    auto deadline = EventLoop::Clock::now() + std::chrono::seconds(10);
    while (accepted_.size() < count && EventLoop::Clock::now() < deadline) loop_.run_once(milliseconds(20));
  }

  EventLoop loop_;
  vhost_vsock::testing::TempDir temp_dir_;
  std::string dir_ = temp_dir_.path();
  std::string path_ = dir_ + "/l.sock";
  std::vector<UniqueFd> accepted_;
};

UniqueFd connect_to(const std::string& path) {
  const sockaddr_un address = unix_socket_address(path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) return {};
  return fd;
}

// A bound socket nobody listens on, as a crashed process leaves it.
void leave_stale_socket(const std::string& path) {
  const sockaddr_un address = unix_socket_address(path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0);
}

// How connections are accepted (flags, batches, pauses) is SocketAcceptor's
// (socket_acceptor_test.cpp); here only that they arrive from the path.
TEST_F(UnixListenerTest, AcceptsConnectionsOnItsPath) {
  UnixListener listener(loop_, path_, collect());
  EXPECT_EQ(listener.path(), path_);
  UniqueFd client = connect_to(path_);
  ASSERT_TRUE(client);
  run_until_accepted(1);
  ASSERT_EQ(accepted_.size(), 1u);
  EXPECT_EQ(listener.stats().accepted, 1u);
  ASSERT_EQ(::write(client.get(), "x", 1), 1);
  char byte = 0;
  EXPECT_EQ(::read(accepted_[0].get(), &byte, 1), 1);  // connected to the peer, not some other fd
  EXPECT_EQ(byte, 'x');
}

TEST_F(UnixListenerTest, ReplacesAStaleSocketAndUnlinksItsOwnFileOnDestruction) {
  leave_stale_socket(path_);
  ASSERT_FALSE(connect_to(path_));  // stale: nobody listens
  {
    UnixListener listener(loop_, path_, collect());
    UniqueFd client = connect_to(path_);
    EXPECT_TRUE(client);
    run_until_accepted(1);
    EXPECT_EQ(accepted_.size(), 1u);
  }
  EXPECT_FALSE(std::filesystem::exists(path_));
}

TEST_F(UnixListenerTest, RefusesALiveListenerAndKeepsItsFile) {
  UnixListener live(loop_, path_, collect());
  std::string what = expect_refused(path_);
  EXPECT_NE(what.find("another process is listening"), std::string::npos) << what;
  EXPECT_TRUE(std::filesystem::exists(path_));
  UniqueFd client = connect_to(path_);  // the live one still works
  run_until_accepted(2);                // the refused setup's probe connection, then ours
  EXPECT_EQ(accepted_.size(), 2u);
}

TEST_F(UnixListenerTest, RefusesALiveListenerWithAFullBacklog) {
  UnixListener live(loop_, path_, collect(), UnixListener::Options{.backlog = 0});
  loop_.remove(live.fd());  // nobody accepts: the backlog fills up
  std::vector<UniqueFd> clients;
  bool backlog_full = false;
  while (!backlog_full && clients.size() < 64) {
    const sockaddr_un address = unix_socket_address(path_);
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
      ASSERT_EQ(errno, EAGAIN);
      backlog_full = true;
    }
    clients.push_back(std::move(fd));
  }
  ASSERT_TRUE(backlog_full);
  std::string what = expect_refused(path_);
  EXPECT_NE(what.find("backlog is full"), std::string::npos) << what;
  EXPECT_TRUE(std::filesystem::exists(path_));
}

TEST_F(UnixListenerTest, RefusesAnythingThatIsNotASocket) {
  std::string regular = dir_ + "/regular";
  std::FILE* file = std::fopen(regular.c_str(), "w");
  ASSERT_NE(file, nullptr);
  std::fclose(file);
  EXPECT_NE(expect_refused(regular).find("not a socket"), std::string::npos);
  EXPECT_TRUE(std::filesystem::is_regular_file(regular));
  std::string directory = dir_ + "/directory";
  ASSERT_EQ(::mkdir(directory.c_str(), 0700), 0);
  EXPECT_NE(expect_refused(directory).find("not a socket"), std::string::npos);
  EXPECT_TRUE(std::filesystem::is_directory(directory));
}

TEST_F(UnixListenerTest, RefusesPathsAfUnixCannotHold) {
  std::string too_long = dir_ + "/" + std::string(kMaxUnixPathLength, 'x');
  std::string what = expect_refused(too_long);
  EXPECT_NE(what.find(std::to_string(too_long.size()) + " bytes long"), std::string::npos) << what;
  EXPECT_NE(what.find(std::to_string(kMaxUnixPathLength)), std::string::npos) << what;
  expect_refused("");
  std::string fits = dir_ + "/" + std::string(kMaxUnixPathLength - dir_.size() - 1, 'y');
  ASSERT_EQ(fits.size(), kMaxUnixPathLength);
  UnixListener listener(loop_, fits, collect());
  EXPECT_TRUE(connect_to(fits));
}

TEST_F(UnixListenerTest, BindFailureNamesThePathAndCause) {
  std::string what = expect_refused(dir_ + "/missing-directory/l.sock");
  EXPECT_NE(what.find("cannot bind"), std::string::npos) << what;
}

TEST_F(UnixListenerTest, LeavesASuccessorsFileAlone) {
  auto listener = std::make_unique<UnixListener>(loop_, path_, collect());
  ASSERT_EQ(::unlink(path_.c_str()), 0);  // another instance replaced ours
  leave_stale_socket(path_);
  listener.reset();
  EXPECT_TRUE(std::filesystem::exists(path_));
}

TEST_F(UnixListenerTest, CallbackMayDestroyTheListener) {
  std::unique_ptr<UnixListener> listener;
  int calls = 0;
  listener = std::make_unique<UnixListener>(loop_, path_, [&](UniqueFd) {
    ++calls;
    listener.reset();
  });
  UniqueFd first = connect_to(path_);
  UniqueFd second = connect_to(path_);
  loop_.run_once(milliseconds(1000));
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(std::filesystem::exists(path_));
}

// The listener hands its options over to its acceptor.
TEST_F(UnixListenerTest, BoundsAcceptsPerWakeUpAsConfigured) {
  UnixListener listener(loop_, path_, collect(), UnixListener::Options{.accepts_per_event = 1});
  UniqueFd first = connect_to(path_);
  UniqueFd second = connect_to(path_);
  ASSERT_TRUE(first && second);
  loop_.run_once(milliseconds(1000));
  EXPECT_EQ(accepted_.size(), 1u);
  loop_.run_once(milliseconds(1000));
  EXPECT_EQ(accepted_.size(), 2u);
  EXPECT_EQ(listener.stats().accepted, 2u);
  EXPECT_FALSE(listener.paused());
}

}  // namespace
}  // namespace vhost_vsock::base
