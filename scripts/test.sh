#!/usr/bin/env bash
# Runs every test stage: build, unit, integration, package, end-to-end (real VM under
# QEMU), sanitizers, fuzz smoke, benchmark smoke and lint. This is the README's test
# command and what CI runs. Select stages with VUV_STAGES (space or comma separated):
#   VUV_STAGES="build unit integration" scripts/test.sh
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
all_stages="deps build lint unit integration package e2e asan tsan fuzz bench"
default_stages="$all_stages"
stages=${VUV_STAGES:-$default_stages}
stages=${stages//,/ }
for stage in $stages; do
  if [[ " $all_stages " != *" $stage "* ]]; then
    echo "test.sh: unknown stage '$stage' in VUV_STAGES (stages: $all_stages)" >&2
    exit 2
  fi
done
jobs=${VUV_JOBS:-$(nproc)}
# ccache keeps its default directory, shared with developer builds on this machine.
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}

total_passed=0
total_failed=0
failed_stages=()
declare -A stage_seconds

has_stage() { [[ " $stages " == *" $1 "* ]]; }

# ctest prints "NN% tests passed, F tests failed out of T"; add those to the totals.
count_ctest() {
  local log=$1 line failed total
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -1)
  if [[ -z $line ]]; then
    echo "test.sh: no ctest summary in $log (no tests ran?)"
    return 1
  fi
  failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
  total=$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$line")
  total_passed=$((total_passed + total - failed))
  total_failed=$((total_failed + failed))
  [[ $total -gt 0 ]]
}

run_stage() {
  local name=$1
  shift
  echo
  echo "=================== stage: $name ==================="
  local start=$SECONDS
  if "$@"; then
    echo "=== stage $name: ok ($((SECONDS - start)) s)"
  else
    echo "=== stage $name: FAILED ($((SECONDS - start)) s)"
    failed_stages+=("$name")
  fi
  stage_seconds[$name]=$((SECONDS - start))
}

configure() {  # configure <dir> [cmake args...]
  local dir=$1
  shift
  cmake -S "$root" -B "$dir" -G Ninja "$@" >"$dir.configure.log" 2>&1 || {
    cat "$dir.configure.log"
    return 1
  }
}

ctest_label() {  # ctest_label <build dir> <label> [extra ctest args]
  local dir=$1 label=$2
  shift 2
  local log
  log=$(mktemp)
  ctest --test-dir "$dir" -L "^${label}\$" --output-on-failure "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  count_ctest "$log" || rc=1
  rm -f "$log"
  return "$rc"
}

stage_deps() { bash scripts/install-deps.sh; }

# The layer check (no upward or sideways #include / link between src/ folders)
# runs first; the build goes on either way so both failures show.
stage_build() {
  local rc=0
  echo "--- layers: scripts/check_layers.py"
  python3 scripts/check_layers.py || rc=1
  configure build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVUV_WERROR=ON -DCMAKE_INSTALL_PREFIX=/usr && ninja -C build -j "$jobs" || rc=1
  return "$rc"
}

# clang-format, clang-tidy and the function-length check over the build's
# compile_commands.json, so it runs after the build stage.
stage_lint() { VUV_LINT_BUILD=build VUV_JOBS=$jobs bash scripts/lint.sh; }

stage_unit() { ctest_label build unit -j "$jobs"; }
stage_integration() { ctest_label build integration; }
# cmake --install, the man page, the systemd units and the .deb, installed in
# a clean Debian 12 chroot (scripts/check-package.sh).
stage_package() { bash scripts/check-package.sh build; }
stage_e2e() { ctest_label build e2e -V; }

# One clang ASan+UBSan tree serves both the sanitizer suites and the fuzzers
# (coverage instrumentation is harmless to the tests), saving a full build.
configure_asan() {
  configure build-asan -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DVUV_WERROR=ON -DVUV_SANITIZE=address,undefined -DVUV_BUILD_FUZZERS=ON -DVUV_BUILD_BENCH=OFF
}

# ASan+UBSan: unit and integration suites (the integration tests drive the
# sanitized daemon binary from the same build tree).
stage_asan() {
  configure_asan && ninja -C build-asan -j "$jobs" &&
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest_label build-asan unit -j "$jobs" &&
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest_label build-asan integration
}

stage_tsan() {
  configure build-tsan -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
    -DVUV_WERROR=ON -DVUV_SANITIZE=thread -DVUV_BUILD_BENCH=OFF &&
    ninja -C build-tsan -j "$jobs" &&
    TSAN_OPTIONS=halt_on_error=1 ctest_label build-tsan unit -j "$jobs" &&
    TSAN_OPTIONS=halt_on_error=1 ctest_label build-tsan integration
}

# Each fuzzer runs briefly from its committed seed corpus; docs/fuzzing.md says
# how to run them for hours.
stage_fuzz() {
  local seconds=${VUV_FUZZ_SECONDS:-20}
  configure_asan || return 1
  local targets
  targets=$(cd fuzz && ls ./*_fuzzer.cpp 2>/dev/null | sed 's#^\./##; s#\.cpp$##')
  [[ -n $targets ]] || { echo "no fuzzers found"; return 1; }
  # shellcheck disable=SC2086
  ninja -C build-asan -j "$jobs" $targets || return 1
  local rc=0 name corpus work
  for name in $targets; do
    corpus=fuzz/corpus/${name%_fuzzer}
    work=$(mktemp -d)
    [[ -d $corpus ]] && cp -r "$corpus"/. "$work"/
    echo "--- $name for ${seconds}s"
    if build-asan/fuzz/"$name" -max_total_time="$seconds" -print_final_stats=1 "$work" >"$work.log" 2>&1; then
      grep -E 'stat::number_of_executed_units|Done [0-9]+ runs' "$work.log" | tail -2
      total_passed=$((total_passed + 1))
      echo "PASS $name"
    else
      tail -60 "$work.log"
      total_failed=$((total_failed + 1))
      echo "FAIL $name"
      rc=1
    fi
    rm -rf "$work" "$work.log"
  done
  return "$rc"
}

stage_bench() {
  if [[ -x bench/run ]]; then
    bench/run --smoke
  else
    echo "SKIPPED: bench/run does not exist yet"
  fi
}

for stage in $all_stages; do
  has_stage "$stage" && run_stage "$stage" "stage_$stage"
done

echo
echo "=================== summary ==================="
for stage in $all_stages; do
  has_stage "$stage" && printf '%-12s %5s s\n' "$stage" "${stage_seconds[$stage]:-0}"
done
if ((${#failed_stages[@]})); then
  echo "failed stages: ${failed_stages[*]}"
fi
echo "tests: $total_passed passed, $total_failed failed"
((${#failed_stages[@]} == 0))
