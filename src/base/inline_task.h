// A move-only `void()` callable kept in a fixed inline buffer, so storing or
// moving one never allocates. A callable whose captures do not fit fails to
// compile instead of falling back to the heap: capture a pointer, an index or
// a UniqueFd rather than a container.
#pragma once

#include <cassert>
#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

namespace vhost_vsock::base {

class InlineTask {
 public:
  // With the ops pointer this makes 56 bytes, so a queue cell with its
  // sequence number fills exactly one 64-byte cache line.
  static constexpr size_t kCapacity = 48;
  static constexpr size_t kAlignment = alignof(void*);

  // Whether a callable of type Fn can be stored (checked at compile time by the constructor too).
  template <typename Fn>
  static constexpr bool fits =
      std::conjunction_v<std::bool_constant<sizeof(Fn) <= kCapacity>, std::bool_constant<alignof(Fn) <= kAlignment>,
                         std::is_nothrow_move_constructible<Fn>>;

  InlineTask() noexcept = default;

  // Implicit, as lambdas convert to std::function; the requires clause keeps it from hiding the move constructor.
  template <typename F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, InlineTask> && std::is_invocable_r_v<void, std::decay_t<F>&>)
      InlineTask(F&& callable)  // NOLINT(google-explicit-constructor,bugprone-forwarding-reference-overload)
  {
    using Fn = std::decay_t<F>;
    static_assert(sizeof(Fn) <= kCapacity, "InlineTask: the callable's captures exceed kCapacity bytes");
    static_assert(alignof(Fn) <= kAlignment, "InlineTask: the callable needs more alignment than kAlignment");
    static_assert(std::is_nothrow_move_constructible_v<Fn>, "InlineTask: the callable must be nothrow-movable");
    ::new (static_cast<void*>(storage_)) Fn(std::forward<F>(callable));
    ops_ = &kOpsFor<Fn>;
  }

  InlineTask(InlineTask&& other) noexcept { take(other); }
  InlineTask& operator=(InlineTask&& other) noexcept {
    if (this != &other) {
      reset();
      take(other);
    }
    return *this;
  }
  InlineTask(const InlineTask&) = delete;
  InlineTask& operator=(const InlineTask&) = delete;
  ~InlineTask() { reset(); }

  [[nodiscard]] explicit operator bool() const noexcept { return ops_ != nullptr; }

  // Precondition: not empty.
  void operator()() {
    assert(ops_ != nullptr);
    ops_->invoke(storage_);
  }

  // Destroys the callable (and so releases its captures) without running it.
  void reset() noexcept {
    if (ops_ == nullptr) return;
    ops_->destroy(storage_);
    ops_ = nullptr;
  }

 private:
  struct Ops {
    void (*invoke)(void* self);
    void (*relocate)(void* from, void* to) noexcept;  // move-construct into `to`, destroy `from`
    void (*destroy)(void* self) noexcept;
  };

  template <typename Fn>
  static constexpr Ops kOpsFor{
      [](void* self) { (*static_cast<Fn*>(self))(); },
      [](void* from, void* to) noexcept {
        ::new (to) Fn(std::move(*static_cast<Fn*>(from)));
        static_cast<Fn*>(from)->~Fn();
      },
      [](void* self) noexcept { static_cast<Fn*>(self)->~Fn(); },
  };

  void take(InlineTask& other) noexcept {
    if (other.ops_ == nullptr) return;
    other.ops_->relocate(other.storage_, storage_);
    ops_ = std::exchange(other.ops_, nullptr);
  }

  alignas(kAlignment) std::byte storage_[kCapacity];
  const Ops* ops_ = nullptr;
};

}  // namespace vhost_vsock::base
