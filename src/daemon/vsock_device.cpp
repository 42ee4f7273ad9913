#include "daemon/vsock_device.h"

#include "daemon/config.h"

namespace vhost_vsock::daemon {

static_assert(kMaxQueueSize == virtio::kMaxQueueSize, "--queue-size cap must match the virtqueue layer");
static_assert(BasicVsockDevice<vsock::Muxer>::kRxQueue == vsock::Muxer::kRxQueue);
static_assert(BasicVsockDevice<vsock::Muxer>::kTxQueue == vsock::Muxer::kTxQueue);

template class BasicVsockDevice<vsock::Muxer>;

}  // namespace vhost_vsock::daemon
