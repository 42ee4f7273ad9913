#include "daemon/vsock_device.h"

namespace vhost_vsock::daemon {

static_assert(BasicVsockDevice<vsock::Muxer>::kRxQueue == vsock::Muxer::kRxQueue);
static_assert(BasicVsockDevice<vsock::Muxer>::kTxQueue == vsock::Muxer::kTxQueue);

template class BasicVsockDevice<vsock::Muxer>;

}  // namespace vhost_vsock::daemon
