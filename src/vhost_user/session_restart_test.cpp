// How a ring starts again after it stopped: QEMU's stop/cont (GET_VRING_BASE,
// then the same base, addresses and size again) and a memory-table update are
// resumes; a device reset (base 0 again) or a new ring is a fresh start.
#include <gtest/gtest.h>

#include "vhost_user/session.h"
#include "vhost_user/session_test_fixture.h"
#include "vhost_user/test_support.h"

namespace vhost_vsock::vhost_user {
namespace {

using test::SessionTest;

class SessionRestartTest : public SessionTest {
 protected:
  // Runs ring 0 over `chains` chains, then stops it as QEMU's vhost_dev_stop
  // does (disable, GET_VRING_BASE); returns the base it reported.
  uint32_t run_then_stop(int chains) {
    kick_ = start_ring(0);
    EXPECT_EQ(device.starts[0], RingStart::kFresh);
    for (int i = 0; i < chains; ++i) complete_one_chain(0);
    send(Request::kSetVringEnable, encode_vring_state({0, 0}));
    auto replies = send(Request::kGetVringBase, encode_vring_state({0, 0}));
    EXPECT_EQ(replies.size(), 1u);
    auto state = decode_vring_state(replies.at(0).payload);
    EXPECT_TRUE(state);
    EXPECT_FALSE(session.ring_started(0));
    return state ? state->num : 0;
  }

  // QEMU's vhost_dev_start for ring 0 from `base`.
  void restart(uint32_t base) {
    kick_ = configure_ring(0, base);
    send(Request::kSetVringEnable, encode_vring_state({0, 1}));
    ASSERT_TRUE(session.ring_started(0));
  }

  base::UniqueFd kick_;
};

TEST_F(SessionRestartTest, StopThenContinueFromTheSameBaseResumes) {
  const uint32_t base = run_then_stop(3);
  EXPECT_EQ(base, 3u);
  restart(base);
  EXPECT_EQ(device.starts[0], RingStart::kResumed);
  EXPECT_EQ(device.count("started 0"), 2u);
}

TEST_F(SessionRestartTest, ADeviceResetRestartsFromZeroAndIsFresh) {
  run_then_stop(3);
  restart(0);
  EXPECT_EQ(device.starts[0], RingStart::kFresh);
}

TEST_F(SessionRestartTest, NewRingAddressesAreAFreshStart) {
  const uint32_t base = run_then_stop(2);
  VringAddress moved = test::ring_address(0);
  moved.used_user_addr += 0x1000;
  send(Request::kSetVringNum, encode_vring_state({0, test::kRingSize}));
  send(Request::kSetVringBase, encode_vring_state({0, base}));
  ASSERT_EQ(send_acked(Request::kSetVringAddr, encode_vring_address(moved)), 0u);
  kick_ = send_eventfd(Request::kSetVringKick, 0);
  send(Request::kSetVringEnable, encode_vring_state({0, 1}));
  ASSERT_TRUE(session.ring_started(0));
  EXPECT_EQ(device.starts[0], RingStart::kFresh);
}

// A DIMM hotplug: QEMU sends a new table while the ring runs; the ring is
// remapped and goes on where it was.
TEST_F(SessionRestartTest, AMemoryTableUpdateResumes) {
  kick_ = start_ring(0);
  complete_one_chain(0);
  ASSERT_EQ(set_single_region_table(), 0u);
  ASSERT_TRUE(session.ring_started(0));
  EXPECT_EQ(device.starts[0], RingStart::kResumed);
  EXPECT_EQ(device.count("stopped 0"), 1u);
  complete_one_chain(0);  // the queue kept its indices
}

// The front-end went away: whatever comes next is a new guest.
TEST_F(SessionRestartTest, AfterResetOwnerTheNextStartIsFresh) {
  const uint32_t base = run_then_stop(2);
  send(Request::kResetOwner);
  kick_ = start_ring(0, base);
  EXPECT_EQ(device.starts[0], RingStart::kFresh);
}

}  // namespace
}  // namespace vhost_vsock::vhost_user
