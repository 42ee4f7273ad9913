#!/usr/bin/env bash
# Static checks, each listing every offender before failing:
#   format  clang-format --dry-run --Werror on every tracked C/C++ file under
#           src/ bench/ fuzz/ tests/ (the repo's .clang-format)
#   tidy    clang-tidy with the repo's .clang-tidy on every C++ translation
#           unit of src/ and bench/ in the build's compile_commands.json,
#           unit tests (*_test.cpp) aside: a gtest unit costs clang-tidy 5-10x a
#           device unit, about 20 extra minutes on CI's 2 cores. Tests are still
#           clang-formatted and built with -Werror; the src/ headers they share
#           with device code are checked through the device units.
#           (fuzz/ targets exist only in the clang fuzz tree, so they are not covered)
#   length  no function longer than 60 lines in src/, tests and the simulator
#           (src/testing/) aside: clang-tidy's readability-function-size
# Usage: scripts/lint.sh [format] [tidy] [length]   (default: all three)
# VUV_LINT_BUILD names the configured build directory (default: build);
# VUV_JOBS the parallelism (default: nproc).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
build=${VUV_LINT_BUILD:-build}
jobs=${VUV_JOBS:-$(nproc)}
max_function_lines=60
checks=${*:-format tidy length}

indent() { sed 's/^/  /'; }

tidy_runner() {
  local candidate
  for candidate in run-clang-tidy run-clang-tidy-14 run-clang-tidy.py; do
    if command -v "$candidate" >/dev/null; then
      echo "$candidate"
      return
    fi
  done
}

need_compile_commands() {
  [[ -f $build/compile_commands.json ]] && return 0
  echo "lint: $build/compile_commands.json missing: configure the build first (cmake -S . -B $build -G Ninja)" >&2
  return 1
}

check_format() {
  local files unformatted
  mapfile -t files < <(git ls-files -- 'src/*.cpp' 'src/*.h' 'src/*.c' 'bench/*.cpp' 'bench/*.h' 'bench/*.c' \
    'fuzz/*.cpp' 'fuzz/*.h' 'fuzz/*.c' 'tests/*.cpp' 'tests/*.h' 'tests/*.c')
  # shellcheck disable=SC2016 # $f is expanded by the inner sh
  unformatted=$(printf '%s\0' "${files[@]}" |
    xargs -0 -P "$jobs" -n 8 sh -c 'for f; do clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || echo "$f"; done' sh |
    sort)
  if [[ -n $unformatted ]]; then
    echo "not clang-formatted ($(wc -l <<<"$unformatted") of ${#files[@]} files; fix with clang-format -i):"
    indent <<<"$unformatted"
    return 1
  fi
  echo "all ${#files[@]} files clang-formatted"
}

# run_tidy <log> <file regex> [run-clang-tidy args...]: the full output goes to <log>.
run_tidy() {
  local log=$1 regex=$2 runner
  shift 2
  runner=$(tidy_runner)
  [[ -n $runner ]] || { echo "lint: run-clang-tidy not found (Debian: clang-tidy package)" >&2; return 1; }
  # The database may come from gcc: clang does not know every gcc -W option.
  "$runner" -p "$build" -j "$jobs" -quiet -extra-arg=-Wno-unknown-warning-option "$@" "$regex" >"$log" 2>&1
  local rc=$?
  sed -i 's/\x1b\[[0-9;]*m//g' "$log"  # run-clang-tidy asks for colour even into a file
  return "$rc"
}

# Diagnostics of a run_tidy log, paths relative to the repo, each once (a
# header is analysed once per unit that includes it).
findings() {
  grep -E '^/.*: (warning|error): ' "$1" | sed "s#^$root/##" | sort -u
}

check_tidy() {
  need_compile_commands || return 1
  local log found rc
  log=$(mktemp)
  run_tidy "$log" "^$root/(src|bench)/(?!.*_test\.cpp$).*\.cpp$"
  rc=$?
  found=$(findings "$log")
  if [[ -n $found ]]; then
    echo "clang-tidy findings ($(wc -l <<<"$found")):"
    indent <<<"$found"
  elif ((rc != 0)); then
    tail -20 "$log"  # failed without a diagnostic (crash, bad database): show why
  else
    echo "clang-tidy: clean"
  fi
  rm -f "$log"
  return "$rc"
}

check_length() {
  need_compile_commands || return 1
  local log found rc config
  config="{Checks: '-*,readability-function-size', WarningsAsErrors: '*', HeaderFilterRegex: '$root/src/',"
  config+=" CheckOptions: [{key: readability-function-size.LineThreshold, value: '$max_function_lines'}]}"
  log=$(mktemp)
  # Device code only: unit tests and the guest simulator may be longer.
  run_tidy "$log" "^$root/src/(?!testing/)(?!.*_test\.cpp$).*\.cpp$" -config="$config"
  rc=$?
  # Each warning is followed by a note with the count: "<n> lines including whitespace and comments".
  found=$(awk -v root="$root/" '
    / (warning|error): function .* exceeds recommended size/ { where = $1; name = $4; next }
    / note: [0-9]+ lines including/ && where != "" {
      for (i = 1; i <= NF; ++i) if ($i == "note:") lines = $(i + 1)
      sub(root, "", where)
      print where " " name " " lines " lines"
      where = ""
    }' "$log" | sort -u)
  if [[ -n $found ]]; then
    echo "functions longer than $max_function_lines lines in src/ ($(wc -l <<<"$found")):"
    indent <<<"$found"
  elif ((rc != 0)); then
    tail -20 "$log"
  else
    echo "function length: every function in src/ is at most $max_function_lines lines"
  fi
  rm -f "$log"
  return "$rc"
}

failed=()
for check in $checks; do
  case $check in
    format | tidy | length) ;;
    *)
      echo "lint: unknown check '$check' (checks: format tidy length)" >&2
      exit 2
      ;;
  esac
  echo "--- lint: $check"
  "check_$check" || failed+=("$check")
done
if ((${#failed[@]})); then
  echo "lint failed: ${failed[*]}"
  exit 1
fi
echo "lint: clean"
