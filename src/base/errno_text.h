// Text for an errno value. Unlike std::strerror this is thread-safe (clang-tidy
// flags strerror as concurrency-mt-unsafe), and VM workers run on several threads.
#pragma once

#include <string>
#include <system_error>

namespace vhost_vsock::base {

inline std::string errno_text(int error) {
  return std::generic_category().message(error);
}

}  // namespace vhost_vsock::base
