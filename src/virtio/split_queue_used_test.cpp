// Used ring, unpop, notification decisions and ring (re)configuration.
#include <limits>
#include <vector>

#include "virtio/split_queue_test_support.h"

namespace vhost_vsock::virtio {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): test helpers

TEST_F(SplitQueueTest, UnpopGivesChainsBack) {
  start(8);
  for (uint16_t i = 0; i < 3; ++i) {
    ring_->set_desc(i, kData, 16, kWrite);
    ring_->make_available(i);
  }
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 16);  // completing an earlier one does not stop unpop of later ones
  queue_.unpop(2);
  EXPECT_EQ(queue_.next_avail(), 1);
  EXPECT_TRUE(queue_.has_available());
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 1);
  // Asking for more than was popped is clamped.
  queue_.unpop(100);
  EXPECT_EQ(queue_.next_avail(), 0);
}

TEST_F(SplitQueueTest, UnpopNeverReachesBackOverAnInvalidChain) {
  start(8);
  ring_->set_desc(0, kData, 16, kWrite);
  ring_->set_desc(1, kEnd, 16, kWrite);  // invalid
  ring_->set_desc(2, kData, 16, kWrite);
  ring_->make_available(0);
  ring_->make_available(1);
  ring_->make_available(2);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kInvalidChain);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.unpop(3);
  // Only the chain after the invalid one comes back; the invalid one was
  // already returned to the driver and must not be returned twice.
  EXPECT_EQ(queue_.next_avail(), 2);
}

TEST_F(SplitQueueTest, UsedRingEntriesAppearOnlyAfterFlush) {
  start(4);
  for (uint16_t round = 0; round < 3; ++round) {
    for (uint16_t i = 0; i < 4; ++i) {
      ring_->set_desc(i, kData, 64, kWrite);
      ring_->make_available(static_cast<uint16_t>(3 - i));
    }
    for (uint16_t i = 0; i < 4; ++i) {
      ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
      queue_.add_used(chain_.id(), 10u * round + i);
    }
    EXPECT_EQ(ring_->used_idx(), 4 * round);
    queue_.flush_used();
    EXPECT_EQ(ring_->used_idx(), 4 * (round + 1));
    for (uint16_t i = 0; i < 4; ++i) {
      const auto [id, len] = ring_->used_elem(i);
      EXPECT_EQ(id, 3u - i);
      EXPECT_EQ(len, 10u * round + i);
    }
  }
  queue_.add_used(9, 1);  // out of range: ignored
  queue_.flush_used();
  EXPECT_EQ(ring_->used_idx(), 12);
}

TEST_F(SplitQueueTest, NotifyWithoutEventIdxFollowsNoInterrupt) {
  start(8);
  for (uint16_t i = 0; i < 3; ++i) {
    ring_->set_desc(i, kData, 4);
    ring_->make_available(i);
  }
  EXPECT_FALSE(queue_.should_notify());  // nothing published yet
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 0);
  EXPECT_FALSE(queue_.should_notify());  // added but not flushed
  queue_.flush_used();
  EXPECT_TRUE(queue_.should_notify());
  EXPECT_FALSE(queue_.should_notify());  // already notified for that

  ring_->set_avail_flags(1);  // VRING_AVAIL_F_NO_INTERRUPT
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(1, 0);
  queue_.flush_used();
  EXPECT_FALSE(queue_.should_notify());

  ring_->set_avail_flags(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(2, 0);
  queue_.flush_used();
  EXPECT_TRUE(queue_.should_notify());
  EXPECT_EQ(queue_.stats().notifications_sent, 2u);
  EXPECT_EQ(queue_.stats().notifications_suppressed, 1u);
}

TEST_F(SplitQueueTest, NotifyOnEmptyOverridesNoInterrupt) {
  start(8, kFeatureVersion1 | kFeatureNotifyOnEmpty);
  ring_->set_avail_flags(1);
  for (uint16_t i = 0; i < 2; ++i) {
    ring_->set_desc(i, kData, 4);
    ring_->make_available(i);
  }
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 0);
  queue_.flush_used();
  EXPECT_FALSE(queue_.should_notify());  // more buffers still available
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(1, 0);
  queue_.flush_used();
  EXPECT_TRUE(queue_.should_notify());  // ran out of buffers
}

TEST_F(SplitQueueTest, NotifyOnEmptyOverridesUsedEvent) {
  start(8, kFeatureVersion1 | kFeatureEventIdx | kFeatureNotifyOnEmpty);
  ring_->set_desc(0, kData, 4);
  ring_->make_available(0);
  ring_->make_available(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 0);
  queue_.flush_used();
  EXPECT_TRUE(queue_.should_notify());  // first decision
  ring_->set_used_event(100);           // driver wants nothing soon
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 0);
  queue_.flush_used();
  EXPECT_TRUE(queue_.should_notify());  // but the ring is empty
}

TEST_F(SplitQueueTest, EventIdxDecisions) {
  start(16, kFeatureVersion1 | kFeatureEventIdx);
  ring_->set_avail_flags(1);  // ignored with EVENT_IDX
  for (uint16_t i = 0; i < 16; ++i) {
    ring_->set_desc(i, kData, 4);
    ring_->make_available(i);
  }
  auto complete = [&](int n) {
    for (int k = 0; k < n; ++k) {
      ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
      queue_.add_used(chain_.id(), 0);
    }
    queue_.flush_used();
  };

  ring_->set_used_event(50);
  complete(1);                          // used idx 1
  EXPECT_TRUE(queue_.should_notify());  // first decision is always a yes

  ring_->set_used_event(1);  // wants an interrupt once entry #1 (idx 2) is used
  complete(1);               // used idx 2: old 1, new 2, event 1 in [1, 2)
  EXPECT_TRUE(queue_.should_notify());

  ring_->set_used_event(4);
  complete(2);  // used idx 4: event 4 not in [2, 4)
  EXPECT_FALSE(queue_.should_notify());
  complete(1);  // used idx 5: event 4 in [4, 5)
  EXPECT_TRUE(queue_.should_notify());

  ring_->set_used_event(7);
  complete(3);  // used idx 8: event 7 in [5, 8), batched
  EXPECT_TRUE(queue_.should_notify());

  ring_->set_used_event(7);  // stale: already passed
  complete(2);               // used idx 10
  EXPECT_FALSE(queue_.should_notify());
}

TEST_F(SplitQueueTest, EventIdxAcrossIndexWrap) {
  start(4, kFeatureVersion1 | kFeatureEventIdx);
  ring_->set_avail_idx(65535);
  ring_->set_used_idx(65535);
  queue_.set_next_avail(65535);
  ring_->set_desc(0, kData, 4);
  for (int i = 0; i < 3; ++i) ring_->make_available(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 0);
  queue_.flush_used();                  // used idx 0
  EXPECT_TRUE(queue_.should_notify());  // first
  ring_->set_used_event(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 0);
  queue_.flush_used();  // used idx 1: event 0 in [0, 1)
  EXPECT_TRUE(queue_.should_notify());
}

TEST_F(SplitQueueTest, NotificationSuppressionWithoutEventIdx) {
  start(8);
  EXPECT_EQ(ring_->used_flags(), 0);
  queue_.disable_notifications();
  EXPECT_EQ(ring_->used_flags(), 1);  // VRING_USED_F_NO_NOTIFY
  queue_.enable_notifications();
  EXPECT_EQ(ring_->used_flags(), 0);
}

TEST_F(SplitQueueTest, NotificationSuppressionWithEventIdx) {
  start(8, kFeatureVersion1 | kFeatureEventIdx);
  for (uint16_t i = 0; i < 3; ++i) {
    ring_->set_desc(i, kData, 4);
    ring_->make_available(i);
  }
  queue_.disable_notifications();
  EXPECT_EQ(ring_->used_flags(), 0);  // flags are not used with EVENT_IDX
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(ring_->avail_event(), 0);  // left alone while draining
  queue_.enable_notifications();
  EXPECT_EQ(ring_->avail_event(), 2);   // kick me when you publish avail idx > 2
  EXPECT_TRUE(queue_.has_available());  // the re-check after enabling sees the third
}

// The driver's kick rule with EVENT_IDX (virtio 1.2 §2.7.10, Linux's
// vring_need_event): kick when the avail idx moved from `old_idx` past `event`.
bool driver_kicks(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

TEST_F(SplitQueueTest, SuppressedNotificationsStopEveryKickUntilEnabled) {
  start(8);
  queue_.suppress_notifications();
  EXPECT_EQ(ring_->used_flags(), 1);  // VRING_USED_F_NO_NOTIFY
  queue_.enable_notifications();
  EXPECT_EQ(ring_->used_flags(), 0);

  // With EVENT_IDX, disable_notifications() leaves avail_event where enable
  // put it, so the next buffer still kicks; a poller must stop that one too.
  start(8, kFeatureVersion1 | kFeatureEventIdx);
  queue_.enable_notifications();  // avail_event 0: the first buffer kicks
  EXPECT_TRUE(driver_kicks(ring_->avail_event(), 1, 0));
  queue_.suppress_notifications();
  EXPECT_EQ(ring_->used_flags(), 0);  // flags are not used with EVENT_IDX
  for (uint16_t published = 1; published <= 8; ++published) {
    EXPECT_FALSE(driver_kicks(ring_->avail_event(), published, static_cast<uint16_t>(published - 1))) << published;
  }
  for (uint16_t i = 0; i < 3; ++i) {
    ring_->set_desc(i, kData, 4);
    ring_->make_available(i);
  }
  for (int i = 0; i < 3; ++i) ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.suppress_notifications();  // still none, after the consumed ones
  EXPECT_FALSE(driver_kicks(ring_->avail_event(), 4, 3));
  EXPECT_FALSE(driver_kicks(ring_->avail_event(), 9, 3)) << "not even for a large batch";
  // The race the re-check closes: the driver publishes a buffer while kicks
  // are suppressed (it does not kick), then the device enables them.
  ring_->set_desc(3, kData, 4);
  ring_->make_available(3);
  queue_.enable_notifications();
  EXPECT_EQ(ring_->avail_event(), 3);
  EXPECT_TRUE(queue_.has_available()) << "the re-check after enabling finds the buffer that did not kick";
}

TEST_F(SplitQueueTest, ConfigureValidates) {
  ring_ = std::make_unique<DriverRing>(memory_, 8, kDesc, kAvail, kUsed);
  SplitQueue q;
  std::string error;
  EXPECT_FALSE(q.configure(nullptr, 8, kDesc, kAvail, kUsed, &error));
  EXPECT_FALSE(q.configure(memory_, 0, kDesc, kAvail, kUsed, &error));
  EXPECT_FALSE(q.configure(memory_, 12, kDesc, kAvail, kUsed, &error));
  EXPECT_NE(error.find("power of two"), std::string::npos) << error;
  EXPECT_FALSE(q.configure(memory_, 65535, kDesc, kAvail, kUsed, &error));
  EXPECT_FALSE(q.configure(memory_, 8, kDesc + 8, kAvail, kUsed, &error));
  EXPECT_NE(error.find("16-byte"), std::string::npos) << error;
  EXPECT_FALSE(q.configure(memory_, 8, kDesc, kAvail + 1, kUsed, &error));
  EXPECT_FALSE(q.configure(memory_, 8, kDesc, kAvail, kUsed + 2, &error));
  // Rings that do not fit inside memory, including the trailing event fields.
  EXPECT_FALSE(q.configure(memory_, 8, kEnd - 112, kAvail, kUsed, &error));
  EXPECT_FALSE(q.configure(memory_, 8, kDesc, kEnd - (6 + 2 * 8) + 2, kUsed, &error));
  EXPECT_FALSE(q.configure(memory_, 8, kDesc, kAvail, kEnd - 68, &error));  // needs 70 bytes
  EXPECT_NE(error.find("used ring"), std::string::npos) << error;
  EXPECT_FALSE(q.configure(memory_, 8, kBase - 0x1000, kAvail, kUsed, &error));
  EXPECT_FALSE(q.configured());
  // Exactly fitting rings are fine.
  EXPECT_TRUE(q.configure(memory_, 8, kEnd - 128, kEnd - 0x1000 - 24, kEnd - 0x2000 - 72, &error)) << error;
  EXPECT_TRUE(q.configure(memory_, 32768, kBase, kBase + 0x80000, kBase + 0xa0000, &error)) << error;
  EXPECT_TRUE(q.configured());
  EXPECT_EQ(q.size(), 32768);
}

TEST_F(SplitQueueTest, ConfigureTakesUsedIndexFromTheRing) {
  ring_ = std::make_unique<DriverRing>(memory_, 8, kDesc, kAvail, kUsed);
  // A previous backend stopped at avail 5, having used all 5.
  ring_->set_avail_idx(6);
  ring_->set_used_idx(5);
  ring_->set_desc(2, kData, 4);
  // Put head 2 in slot 5 % 8.
  uint8_t* slot = host(kAvail + 14);  // ring[5]
  const uint16_t head = htole16(2);
  std::memcpy(slot, &head, 2);

  queue_.set_next_avail(5);  // SET_VRING_BASE comes before SET_VRING_ADDR
  std::string error;
  ASSERT_TRUE(queue_.configure(memory_, 8, kDesc, kAvail, kUsed, &error)) << error;
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 2);
  queue_.add_used(2, 7);
  queue_.flush_used();
  EXPECT_EQ(ring_->used_idx(), 6);
  EXPECT_EQ(ring_->used_elem(5).first, 2u);
  EXPECT_EQ(ring_->used_elem(5).second, 7u);
}

TEST_F(SplitQueueTest, ReconfigureKeepsIndicesAndPublishesPendingEntries) {
  start(8);
  ring_->set_desc(0, kData, 4);
  ring_->make_available(0);
  ring_->make_available(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 3);
  std::string error;
  ASSERT_TRUE(queue_.configure(memory_, 8, kDesc, kAvail, kUsed, &error)) << error;
  EXPECT_EQ(ring_->used_idx(), 1);
  EXPECT_EQ(queue_.next_avail(), 1);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 4);
  queue_.flush_used();
  EXPECT_EQ(ring_->used_idx(), 2);
  EXPECT_EQ(ring_->used_elem(1).second, 4u);
}

TEST_F(SplitQueueTest, ResetForgetsEverything) {
  start(8);
  ring_->set_desc(0, kData, 4);
  ring_->make_available(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.reset();
  EXPECT_FALSE(queue_.configured());
  EXPECT_EQ(queue_.next_avail(), 0);
  EXPECT_EQ(queue_.stats().chains_popped, 0u);
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kEmpty);
  EXPECT_FALSE(queue_.has_available());
  EXPECT_FALSE(queue_.should_notify());
  queue_.add_used(0, 1);  // harmless when unconfigured
  queue_.flush_used();
}

}  // namespace
}  // namespace vhost_vsock::virtio
