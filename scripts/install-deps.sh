#!/usr/bin/env bash
# Installs every Debian package the project needs (build, tests, VM tests,
# fuzzing, benchmarks). Idempotent: packages already present are skipped, and
# apt-get update runs only when something is missing.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build ccache pkg-config git
  libcli11-dev libyaml-cpp-dev libspdlog-dev libfmt-dev libseccomp-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # --metrics: HTTP server/client, Prometheus text format, JSON
  libcpp-httplib-dev prometheus-cpp-dev nlohmann-json3-dev
  # clang: sanitizers and libFuzzer
  clang clang-tools libclang-rt-dev clang-format clang-tidy
  # VM tests and the demo
  qemu-system-x86 busybox-static socat cpio kmod gzip xz-utils zstd python3
  # packaging: man page, unit checks, the .deb and its clean-chroot install
  scdoc groff-base systemd dpkg-dev mmdebstrap
  # benchmarks and profiles
  valgrind python3-matplotlib
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
