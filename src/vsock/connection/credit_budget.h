// The guest->host memory of one VM: what its connections may hold while
// their host sockets would block. Credit is a promise (the guest may send
// everything we advertise before we read a byte of it), so the budget counts
// promises, not bytes held: a connection holds max(floor, advertised credit
// not yet forwarded, its buffer's storage).
//
// Every connection always has `floor` bytes set aside: the budget is sized so
// that max_connections floors fit, and a new connection never waits for
// memory. Credit above the floor, up to `window`, comes from a shared pool;
// when many connections buffer at once the pool runs dry and the windows we
// advertise shrink towards the floor instead of memory growing past the limit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace vhost_vsock::vsock {

struct CreditBudgetSizes {
  uint32_t window = 0;  // the most credit one connection is given (--tx-buffer-size)
  uint32_t floor = 0;   // credit every connection can always have
  uint64_t limit = 0;   // all connections together (--tx-memory-limit)
};

// The smallest floor worth having: one page, what a Linux guest posts per RX
// buffer. A budget too small for max_connections such floors is refused.
inline constexpr uint32_t kMinCreditFloor = 4096;
// The default floor is a quarter of each connection's even share of the
// limit, so three quarters of the budget can go to the connections that are
// actually moving data.
inline constexpr uint64_t kFloorShareDivisor = 4;
// Default --tx-memory-limit per connection of the cap: 64 KiB, the whole of
// what every connection could hold before windows grew to 256 KiB.
inline constexpr uint64_t kDefaultMemoryPerConnection = uint64_t{64} * 1024;

// Works out the floor for `window`, `limit` (0: derive the default from the
// cap) and the connection cap. Returns an error text when the limit cannot
// give every connection kMinCreditFloor (or the whole window, if smaller).
std::optional<CreditBudgetSizes> derive_credit_budget(uint32_t window, uint64_t limit, size_t max_connections,
                                                      std::string* error);

class CreditBudget {
 public:
  // `sizes` come from derive_credit_budget (floor <= window, floors fit).
  CreditBudget(const CreditBudgetSizes& sizes, size_t max_connections);

  [[nodiscard]] uint32_t window() const { return sizes_.window; }
  [[nodiscard]] uint32_t floor() const { return sizes_.floor; }
  [[nodiscard]] uint64_t limit() const { return sizes_.limit; }
  // Bytes promised right now, floors included: never above limit().
  [[nodiscard]] uint64_t reserved() const { return holders_ * sizes_.floor + pool_used_; }
  [[nodiscard]] uint64_t pool_available() const { return pool_ - pool_used_; }

  // A new connection: it holds its floor.
  uint32_t join();
  // Moves a connection's hold from `held` towards `wanted` (both >= floor):
  // a smaller hold returns the difference to the pool, a larger one takes
  // what the pool has. Returns the new hold.
  uint32_t rehold(uint32_t held, uint32_t wanted);
  // The connection is gone (or will take no more guest data).
  void leave(uint32_t held);

 private:
  CreditBudgetSizes sizes_;
  uint64_t pool_ = 0;  // limit minus the floors of a full connection table
  uint64_t pool_used_ = 0;
  uint64_t holders_ = 0;
};

}  // namespace vhost_vsock::vsock
