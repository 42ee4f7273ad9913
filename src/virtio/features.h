// Device-independent virtio feature bits (virtio 1.2 §6), the one place they
// are spelled out. Device-specific bits (e.g. vsock's STREAM/SEQPACKET) live
// with their device.
#pragma once

#include <cstdint>

namespace vhost_vsock::virtio {

inline constexpr uint64_t kFeatureNotifyOnEmpty = 1ULL << 24;
inline constexpr uint64_t kFeatureAnyLayout = 1ULL << 27;
inline constexpr uint64_t kFeatureIndirectDesc = 1ULL << 28;
inline constexpr uint64_t kFeatureEventIdx = 1ULL << 29;
inline constexpr uint64_t kFeatureVersion1 = 1ULL << 32;
inline constexpr uint64_t kFeatureAccessPlatform = 1ULL << 33;
inline constexpr uint64_t kFeatureRingPacked = 1ULL << 34;
inline constexpr uint64_t kFeatureInOrder = 1ULL << 35;
inline constexpr uint64_t kFeatureOrderPlatform = 1ULL << 36;

}  // namespace vhost_vsock::virtio
