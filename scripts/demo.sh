#!/usr/bin/env bash
# One-command demo: installs what is missing, builds the daemon, prepares a
# small Debian guest, boots it under QEMU with vhost-user-vsock as its vsock
# device, and runs the classic exchange both ways with socat, explaining each
# step. Everything it starts is stopped at the end.
#
#   bash scripts/demo.sh
# VUV_DAEMON=path skips the build and uses that binary; VUV_ACCEL=tcg|kvm
# picks the accelerator (default: TCG unless hardware KVM is loaded).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/4 Installing missing packages (scripts/install-deps.sh)"
bash scripts/install-deps.sh

if [[ -n ${VUV_DAEMON:-} ]]; then
  step "2/4 Using the daemon in VUV_DAEMON=$VUV_DAEMON"
else
  step "2/4 Building the daemon (build/vhost-user-vsock)"
  if [[ ! -f build/build.ninja ]]; then
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  ninja -C build vhost-user-vsock | tail -1
fi

step "3/4 Preparing the guest: Debian's 6.1 kernel + a busybox/socat initramfs (cached)"
VUV_GUEST_IMAGE=$(bash scripts/guest-image.sh | tail -1)
export VUV_GUEST_IMAGE
echo "image: $VUV_GUEST_IMAGE"

step "4/4 Booting the guest and talking to it"
exec python3 - <<'PY'
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, "scripts")
sys.path.insert(0, "tests/e2e")
import vm as vmlib
from cases_basic import seed_exchange_guest_to_host, seed_exchange_host_to_guest
from e2e_lib import E2E, TestFailure


def say(text=""):
    print(text, flush=True)


vm = vmlib.Vm()
d = vm.daemon
try:
    say(f"Starting the daemon, one per VM:\n  {d.binary} --guest-cid {d.cid} --socket {d.socket} "
        f"--uds-path {d.uds_path}")
    d.start()
    say(f"Booting the guest with QEMU ({vm.qemu.accel.upper()}); the vsock device is\n"
        f"  -chardev socket,id=vsock0,path={d.socket} -device vhost-user-vsock-pci,chardev=vsock0\n"
        "  (guest RAM is a shared memfd so the daemon can read and write the virtqueues)")
    start = time.monotonic()
    vm.boot_id = vm.qemu.start()
    say(f"The guest is up after {time.monotonic() - start:.1f} s; its vsock driver found the device (guest CID 3).")
    t = E2E(vm)

    say("\n-- Guest -> host --")
    say(f"Host:  socat - UNIX-LISTEN:{d.uds_path}_1234")
    say('Guest: echo -e "Hello from guest!" | socat - VSOCK-CONNECT:2:1234')
    seed_exchange_guest_to_host(t)
    say("The host's socat printed: Hello from guest!")
    say(f"What happened: the guest connected to CID 2 (the host), port 1234. The daemon turned that\n"
        f"into a connection to the Unix socket {d.uds_path}_1234, where socat was listening,\n"
        "and passed the bytes through.")

    say("\n-- Host -> guest --")
    say("Guest: socat - VSOCK-LISTEN:1234      (and says 'Hello from guest!' to whoever connects)")
    say(f"Host:  socat - UNIX-CONNECT:{d.uds_path}   then types: CONNECT 1234")
    detail = seed_exchange_host_to_guest(t)
    say(f"Result: {detail}.")
    say(f"What happened: a host program connected to the VM's Unix socket {d.uds_path} and asked for\n"
        "guest port 1234 with 'CONNECT 1234'. The daemon opened a vsock connection to the guest, the\n"
        "guest's socat accepted it, and the daemon answered 'OK <host port>'. After that line, the\n"
        "socket carried raw bytes both ways.")
    say("\nThis is the Firecracker / Cloud Hypervisor 'hybrid vsock' protocol, so existing host agents work unchanged.")
    say("Next: scripts/vm.py shell gives you a shell in the same kind of guest; docs/e2e.md has the details.")
    status = 0
except (TestFailure, vmlib.VmError) as e:
    say(f"\nThe demo failed: {e}\n")
    say(vm.logs(40))
    status = 1
finally:
    say("\nShutting down QEMU and the daemon.")
    vm.stop()
sys.exit(status)
PY
