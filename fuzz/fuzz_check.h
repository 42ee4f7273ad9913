// CHECK for the fuzzers: a broken promise aborts, so libFuzzer records the
// input as a crash (assert() would vanish under NDEBUG).
#pragma once

#include <cstdlib>

#define CHECK(cond)            \
  do {                         \
    if (!(cond)) std::abort(); \
  } while (0)
