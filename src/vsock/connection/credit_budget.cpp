#include "vsock/connection/credit_budget.h"

#include <fmt/format.h>

#include <algorithm>

namespace vhost_vsock::vsock {

std::optional<CreditBudgetSizes> derive_credit_budget(uint32_t window, uint64_t limit, size_t max_connections,
                                                      std::string* error) {
  const uint64_t connections = std::max<size_t>(max_connections, 1);
  if (limit == 0) limit = connections * std::max<uint64_t>(kDefaultMemoryPerConnection, kMinCreditFloor);
  const uint64_t share = limit / connections;
  const uint32_t least = std::min(window, kMinCreditFloor);
  if (share < least) {
    *error = fmt::format(
        "tx-memory-limit {} leaves {} bytes per connection for {} connections; each needs at least {} "
        "(raise the limit to {} or lower --max-connections)",
        limit, share, connections, least, connections * least);
    return std::nullopt;
  }
  const uint64_t floor = std::clamp<uint64_t>(share / kFloorShareDivisor, least, window);
  return CreditBudgetSizes{window, static_cast<uint32_t>(floor), limit};
}

CreditBudget::CreditBudget(const CreditBudgetSizes& sizes, size_t max_connections) : sizes_(sizes) {
  const uint64_t floors = static_cast<uint64_t>(max_connections) * sizes.floor;
  pool_ = sizes.limit > floors ? sizes.limit - floors : 0;
}

uint32_t CreditBudget::join() {
  ++holders_;
  return sizes_.floor;
}

uint32_t CreditBudget::rehold(uint32_t held, uint32_t wanted) {
  held = std::max(held, sizes_.floor);
  wanted = std::max(wanted, sizes_.floor);
  if (wanted <= held) {
    pool_used_ -= std::min<uint64_t>(held - wanted, pool_used_);
    return wanted;
  }
  const uint64_t taken = std::min<uint64_t>(wanted - held, pool_available());
  pool_used_ += taken;
  return held + static_cast<uint32_t>(taken);
}

void CreditBudget::leave(uint32_t held) {
  if (holders_ > 0) --holders_;
  const uint64_t extra = held > sizes_.floor ? held - sizes_.floor : 0;
  pool_used_ -= std::min(extra, pool_used_);
}

}  // namespace vhost_vsock::vsock
