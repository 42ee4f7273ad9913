#!/usr/bin/env python3
"""End-to-end suite: Debian's 6.1 kernel boots under QEMU with our daemon as
its vhost-user-vsock device, and real guest programs (socat, vsock_tool) talk
to real host programs through it.

  run_e2e.py                       every group (one VM boot per group)
  run_e2e.py --group basic         one group: basic, bulk, lifecycle, seqpacket, sibling, vsock_test or forward
  run_e2e.py --test seed_host_to_guest --test half_close_guest_to_host
  run_e2e.py --list

Prints PASS/FAIL per test, the daemon/QEMU/console logs for each failure,
and ends with the line 'N passed, M failed'. Exit status 0 only if all passed.
Environment: see scripts/vm.py (VUV_DAEMON, VUV_GUEST_IMAGE, VUV_ACCEL, VUV_KEEP).
"""
import argparse
import os
import sys
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases_basic  # noqa: E402,F401  (registers tests)
import cases_bulk  # noqa: E402,F401
import cases_lifecycle  # noqa: E402,F401
import cases_seqpacket  # noqa: E402,F401
import cases_sibling  # noqa: E402,F401
import cases_vsock_test  # noqa: E402,F401
import cases_forward  # noqa: E402,F401
from e2e_lib import E2E, TESTS, TestFailure, TestSkipped, expect, vmlib  # noqa: E402

GROUPS = ["basic", "bulk", "lifecycle", "seqpacket", "sibling", "vsock_test", "forward"]
# Groups whose boot is not one VM: sibling boots two guests on one daemon
# (CID 3 in g1, CID 4 in g1+g2) and configures CID 5 in g2 without a guest;
# vsock_test boots CID 3 and CID 4 in g1, both with QEMU user networking.
VM_OPTIONS = {"sibling": {"groups": "g1", "siblings": [(4, "g1+g2", True), (5, "g2", False)]},
              "vsock_test": {"groups": "g1", "siblings": [(4, "g1", True)], "user_net": True},
              # forward: the daemon and vuv_sim_guest also go into the guest (an extra initramfs).
              "forward": {"extra_initrd": cases_forward.extra_initramfs}}
RSS_LIMIT_MIB = 64


def daemon_memory(t):
    """The daemon's memory after the group. VmRSS also counts the guest RAM
    pages the daemon touched through its shared mapping of the guest's memfd
    (RssShmem), which is the guest's memory, not ours: the bound applies to
    the daemon's own memory (VmRSS - RssShmem), and the peak (VmHWM) must
    stay under the bound plus the guest RAM size."""
    mem = {k: v / 1024 for k, v in t.vm.daemon.memory_kib().items()}
    own = mem["VmRSS"] - mem.get("RssShmem", 0)
    peak_limit = RSS_LIMIT_MIB + t.vm.qemu.memory_mib
    detail = (f"VmRSS {mem['VmRSS']:.1f} MiB (own {own:.1f}, guest RAM mapped {mem.get('RssShmem', 0):.1f}), "
              f"VmHWM {mem['VmHWM']:.1f} MiB; limits: own < {RSS_LIMIT_MIB} MiB, VmHWM < {peak_limit} MiB")
    expect(own < RSS_LIMIT_MIB and mem["VmHWM"] < peak_limit, detail)
    return detail


class Runner:
    def __init__(self, daemon, total):
        self.daemon = daemon
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.group = None  # the group running, so a VM restarted after a failure has its siblings
        self.total = total  # checks expected, for the [done/total] progress prefix
        self.started = time.monotonic()
        self.image_dir = None

    def record(self, name, ok, seconds, detail):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        done = self.passed + self.failed + self.skipped
        progress = f"[{done}/{max(done, self.total)} {time.monotonic() - self.started:.0f}s]"
        if ok:
            print(f"{progress} PASS {name} ({seconds:.1f}s){': ' + detail if detail else ''}", flush=True)
        else:
            print(f"{progress} FAIL {name} ({seconds:.1f}s): {detail}", flush=True)

    def record_skip(self, name, seconds, reason):
        self.skipped += 1
        done = self.passed + self.failed + self.skipped
        print(f"[{done}/{max(done, self.total)} {time.monotonic() - self.started:.0f}s] SKIPPED {name} "
              f"({seconds:.1f}s): {reason}", flush=True)

    def boot(self, group=None):
        vm = vmlib.Vm(self.daemon, self.image_dir, **VM_OPTIONS.get(group, {}))  # TestSkipped: group cannot run
        try:
            seconds = vm.start()
        except BaseException:
            print(vm.logs(), flush=True)
            vm.stop()
            raise
        print(f"--- VM up in {seconds:.1f}s (accel {vm.qemu.accel}, workdir {vm.workdir})", flush=True)
        return vm

    def recover(self, vm):
        """After a failure: make sure the next test gets a working VM."""
        if not vm.daemon.alive():
            print(f"--- the daemon died (status {vm.daemon.proc.returncode}); starting a new daemon and VM",
                  flush=True)
            vm.stop()
            return self.boot(self.group)
        try:
            if vm.qemu.proc.poll() is None:
                vm.shell.kill_jobs()
                for sibling in vm.sibling_qemus.values():
                    sibling.shell.kill_jobs()
                return vm
        except (vmlib.VmError, OSError):
            pass
        print("--- the guest stopped answering; restarting QEMU", flush=True)
        vm.restart_qemu()
        return vm

    def run_test(self, vm, name, fn):
        start = time.monotonic()
        try:
            detail = fn(E2E(vm))
            self.record(name, True, time.monotonic() - start, detail)
            try:
                vm.shell.kill_jobs()
            except (vmlib.VmError, OSError):
                pass
            return vm
        except TestSkipped as e:
            self.record_skip(name, time.monotonic() - start, str(e))
            return vm
        except TestFailure as e:
            self.record(name, False, time.monotonic() - start, str(e))
        except Exception as e:  # noqa: BLE001  (a broken test must not stop the suite)
            self.record(name, False, time.monotonic() - start, f"{type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stdout)
        print(vm.logs(), flush=True)
        return self.recover(vm)

    def run_group(self, group, tests):
        print(f"=== group {group}: {', '.join(name for name, _ in tests)}", flush=True)
        self.group = group
        try:
            vm = self.boot(group)
        except TestSkipped as e:
            for name, _ in tests:
                self.record_skip(name, 0, str(e))
            return
        except Exception as e:  # noqa: BLE001
            for name, _ in tests:
                self.record(name, False, 0, f"the VM did not start: {e}")
            return
        try:
            for name, fn in tests:
                vm = self.run_test(vm, name, fn)
            vm = self.run_test(vm, f"daemon_memory_after_{group}", daemon_memory)
        except Exception as e:  # noqa: BLE001  (recovery itself failed)
            self.record(f"{group}_recovery", False, 0, f"{type(e).__name__}: {e}")
        finally:
            vm.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", action="append", choices=GROUPS + ["all"])
    parser.add_argument("--test", action="append", help="run only this test (repeatable)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--daemon", default=vmlib.default_daemon(), help="daemon binary")
    args = parser.parse_args()

    if args.list:
        for group, name, _ in TESTS:
            print(f"{group:10} {name}")
        return 0
    groups = GROUPS if not args.group or "all" in args.group else args.group
    selected = [(g, n, f) for g, n, f in TESTS if g in groups and (not args.test or n in args.test)]
    unknown = set(args.test or []) - {n for _, n, _ in TESTS}
    if unknown:
        print(f"unknown test(s): {', '.join(sorted(unknown))}; see --list")
        return 2

    # Each group with tests also runs its daemon_memory_after_<group> check.
    total = len(selected) + len({g for g, _, _ in selected})
    runner = Runner(os.path.abspath(args.daemon), total)
    start = time.monotonic()
    try:
        if not os.access(runner.daemon, os.X_OK):
            raise vmlib.VmError(f"daemon binary {runner.daemon} not built (ninja -C build vhost-user-vsock)")
        runner.image_dir = vmlib.guest_image_dir()
    except vmlib.VmError as e:
        for _, name, _ in selected:
            runner.record(name, False, 0, str(e))
        selected = []
    for group in groups:
        tests = [(n, f) for g, n, f in selected if g == group]
        if tests:
            runner.run_group(group, tests)
    vmlib.cleanup()
    print(f"--- e2e finished in {time.monotonic() - start:.0f}s")
    skipped = f", {runner.skipped} skipped" if runner.skipped else ""
    print(f"{runner.passed} passed, {runner.failed} failed{skipped}")
    return 0 if runner.failed == 0 and runner.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
