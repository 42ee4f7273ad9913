#!/usr/bin/env bash
# Checks what `cmake --install` and `cpack -G DEB` deliver, from a configured
# and built tree (the test.sh "package" stage):
#   1. cmake --install into a scratch DESTDIR puts every file in place;
#   2. the man page renders without groff warnings;
#   3. both systemd units pass `systemd-analyze verify` with no finding at all
#      (it exits 0 on parse errors, so any output fails the check);
#   4. cpack builds the .deb, and dpkg-shlibdeps gave it its library Depends;
#   5. the .deb installs with apt in a clean Debian 12 chroot (mmdebstrap), and
#      the daemon there starts, serves a VM socket and stops on SIGTERM.
# Usage: scripts/check-package.sh [BUILD_DIR]   (default: build, configured with
# -DCMAKE_INSTALL_PREFIX=/usr). VUV_PACKAGE_CHROOT=0 skips step 5, saying so.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fail() { echo "check-package: FAILED: $*" >&2; exit 1; }
step() { echo "--- $*"; }

prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
[[ $prefix == /usr ]] || fail "$build is configured with CMAKE_INSTALL_PREFIX=$prefix; the package needs /usr"

step "cmake --install into a scratch root"
DESTDIR="$scratch/root" cmake --install "$build" >/dev/null
expected=(
  usr/bin/vhost-user-vsock
  usr/share/man/man8/vhost-user-vsock.8.gz
  usr/lib/systemd/system/vhost-user-vsock.service
  usr/lib/systemd/system/vhost-user-vsock@.service
  usr/share/doc/vhost-user-vsock/examples/vms.yaml
)
for file in "${expected[@]}"; do
  [[ -s $scratch/root/$file ]] || fail "cmake --install did not install /$file"
done
echo "installed: ${expected[*]}"

step "man page renders cleanly"
warnings=$(zcat "$scratch/root/usr/share/man/man8/vhost-user-vsock.8.gz" | groff -man -ww -z 2>&1 || true)
[[ -z $warnings ]] || fail "groff warnings in the man page: $warnings"

step "systemd-analyze verify"
# verify checks that ExecStart's binary exists, so point it at the scratch copy.
mkdir -p "$scratch/units"
for unit in vhost-user-vsock.service vhost-user-vsock@.service; do
  sed "s|/usr/bin/vhost-user-vsock|$scratch/root/usr/bin/vhost-user-vsock|" \
    "$scratch/root/usr/lib/systemd/system/$unit" >"$scratch/units/$unit"
done
for unit in vhost-user-vsock.service vhost-user-vsock@vm3.service; do
  findings=$(systemd-analyze verify --man=no "$scratch/units/$unit" 2>&1) || fail "verify $unit: $findings"
  [[ -z $findings ]] || fail "verify $unit: $findings"
  echo "$unit: verified"
done

step "cpack -G DEB"
rm -f "$build"/vhost-user-vsock_*.deb
(cd "$build" && cpack -G DEB >"$scratch/cpack.log" 2>&1) || fail "cpack: $(cat "$scratch/cpack.log")"
deb=$(ls "$build"/vhost-user-vsock_*.deb)
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libc6 libstdc++6 libyaml-cpp libseccomp2 libspdlog; do
  [[ $depends == *"$lib"* ]] || fail "Depends lacks $lib (dpkg-shlibdeps?): $depends"
done
echo "$(basename "$deb"): Depends: $depends"

if [[ ${VUV_PACKAGE_CHROOT:-1} == 0 ]]; then
  echo "SKIPPED: install in a clean Debian 12 chroot (VUV_PACKAGE_CHROOT=0)"
  exit 0
fi
step "install in a clean Debian 12 chroot (mmdebstrap, about 2 minutes)"
chroot_dir="$scratch/chroot"
mmdebstrap --quiet --variant=apt --mode=root bookworm "$chroot_dir" http://deb.debian.org/debian ||
  fail "mmdebstrap could not build a Debian 12 chroot (network?)"
cp "$deb" "$chroot_dir/tmp/"
chroot "$chroot_dir" sh -ec "
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /tmp/$(basename "$deb") >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }
  vhost-user-vsock --version
  vhost-user-vsock --guest-cid 3 --socket /tmp/vm.sock --uds-path /tmp/vm.vsock 2>/tmp/daemon.log &
  pid=\$!
  for i in \$(seq 50); do [ -S /tmp/vm.sock ] && break; sleep 0.1; done
  [ -S /tmp/vm.sock ] || { cat /tmp/daemon.log; exit 1; }
  kill -TERM \$pid
  wait \$pid
  grep -q 'ready' /tmp/daemon.log
" || fail "the .deb does not install or run in a clean Debian 12 chroot"
echo "the .deb installs and runs in a clean Debian 12 chroot"
