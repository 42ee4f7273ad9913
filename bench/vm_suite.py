"""The VM group: the e2e guest (scripts/guest-image.sh) under QEMU with our
daemon as its vsock device, and on the SAME VM, in the same rounds, the
alternatives: virtio-net with QEMU user networking, and a virtio-serial port
on a Unix socket chardev. Every transfer uses bench/guest/xfer.c on both
sides, so the transports do identical application work.

QEMU options are added by subclassing scripts/vm.py's Qemu (no change to
that file); the guest gets virtio_net, virtio_console and xfer from a second
cpio archive appended to the e2e initramfs (the kernel unpacks both)."""
from __future__ import annotations

import gzip
import importlib.util
import os
import re
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

from benchlib import Context, Measurement, Result, mark_not_measured

XFER_BINARY = "bench/bench_xfer"
EXTRA_MODULES = ["failover", "net_failover", "virtio_net", "virtio_console"]  # load order
GUEST_SETUP = """#!/bin/sh
# Bench guest setup: modules for the alternatives, the user-net address, the port name.
for m in failover net_failover virtio_net virtio_console; do
  [ -f /lib/modules/bench/$m.ko ] && insmod /lib/modules/bench/$m.ko 2>/dev/null
done
# replace, not add: the e2e image's init may have configured eth0 already.
ip link set eth0 up && ip addr replace 10.0.2.15/24 dev eth0 && ip route replace default via 10.0.2.2 || exit 1
for p in /sys/class/virtio-ports/*; do
  [ "$(cat $p/name 2>/dev/null)" = bench ] && { echo "port=/dev/$(basename $p)"; exit 0; }
done
echo "no virtio-serial port named bench"; exit 1
"""


# Non-default daemon settings, measured on a second boot after the main rounds
# (guest→host only: --tx-buffer-size is our buf_alloc, the guest's send window).
# The default is 256K; 64K is vhost-device-vsock's default (and ours before 2026-12).
TX_BUFFER_ROWS = [("tx64k", "64K", 64 * 1024), ("tx1m", "1M", 1024 * 1024)]
# The same vsock figures over packed virtqueues (QEMU packed=on), on a boot of
# their own after the main rounds, so split and packed come from one run.
PACKED_ROWS = ["g2h", "h2g", "rtt", "connect"]


def measurements(ctx: Context) -> list[Measurement]:
    """The figures this group produces (argv is unused: the suite runs them itself)."""
    out = []
    for transport, name in (("vsock", "vsock (ours)"), ("net", "virtio-net, user networking (TCP)"),
                            ("serial", "virtio-serial port (Unix chardev)")):
        out.append(Measurement(f"vm.{transport}.g2h", "vm" if transport == "vsock" else "alt",
                               f"VM {name} guest→host, 64K writes", "Gbit/s", True, [], "gbit_per_s"))
        out.append(Measurement(f"vm.{transport}.h2g", "vm" if transport == "vsock" else "alt",
                               f"VM {name} host→guest, 64K writes", "Gbit/s", True, [], "gbit_per_s"))
        out.append(Measurement(f"vm.{transport}.rtt", "vm" if transport == "vsock" else "alt",
                               f"VM {name} 1-byte round trip", "µs", False, [], "mean_us"))
        if transport != "serial":
            out.append(Measurement(f"vm.{transport}.connect", "vm" if transport == "vsock" else "alt",
                                   f"VM {name} host-initiated connects", "conn/s", True, [], "per_second"))
    for row in PACKED_ROWS:
        split = next(m for m in out if m.id == f"vm.vsock.{row}")
        out.append(Measurement(f"vm.vsock_packed.{row}", "vm", split.label.replace("vsock (ours)", "vsock (ours) "
                               "over PACKED virtqueues (packed=on, separate boot after the main rounds)"),
                               split.unit, split.higher_is_better, [], split.key))
    for suffix, text, _ in TX_BUFFER_ROWS:
        out.append(Measurement(f"vm.vsock.g2h.{suffix}", "vm",
                               f"VM vsock (ours) guest→host, 64K writes, NON-DEFAULT --tx-buffer-size {text} "
                               "(separate boot, after the main rounds)", "Gbit/s", True, [], "gbit_per_s"))
    return out


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The daemon's counters, read from its metrics endpoint around each vsock
# transfer, as per-MiB figures under the simulator's names (the event table).
DEVICE_COUNTERS = {
    "packets_to_guest_per_mib": ('vhost_user_vsock_packets_total', 'direction="host_to_guest"'),
    "packets_from_guest_per_mib": ('vhost_user_vsock_packets_total', 'direction="guest_to_host"'),
    "credit_requests_to_guest_per_mib": ('vhost_user_vsock_credit_requests_total', ''),
    "rx_interrupts_per_mib": ('vhost_user_vsock_queue_notifications_total', 'queue="rx",kind="call"'),
    "tx_interrupts_per_mib": ('vhost_user_vsock_queue_notifications_total', 'queue="tx",kind="call"'),
    "rx_kicks_per_mib": ('vhost_user_vsock_queue_notifications_total', 'queue="rx",kind="kick"'),
    "tx_kicks_per_mib": ('vhost_user_vsock_queue_notifications_total', 'queue="tx",kind="kick"'),
}


def read_device_counters(port: int) -> dict[str, float]:
    """DEVICE_COUNTERS' totals from the daemon's Prometheus text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    totals = {key: 0.0 for key in DEVICE_COUNTERS}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        for key, (name, labels) in DEVICE_COUNTERS.items():
            if series.split("{", 1)[0] == name and labels in series:
                totals[key] += float(value)
    return totals


def read_daemon_process_counters(pid: int) -> dict[str, float]:
    """The sim rows' syscall and context-switch counts, from /proc (0 if gone)."""
    totals = {"daemon_read_calls_per_mib": 0.0, "daemon_write_calls_per_mib": 0.0,
              "daemon_wakeups_per_mib": 0.0, "daemon_preemptions_per_mib": 0.0}
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("syscr:"):
                totals["daemon_read_calls_per_mib"] = float(line.split()[1])
            if line.startswith("syscw:"):
                totals["daemon_write_calls_per_mib"] = float(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    totals["daemon_wakeups_per_mib"] += float(line.split()[1])
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    totals["daemon_preemptions_per_mib"] += float(line.split()[1])
    except OSError:
        pass
    return totals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_vm_module(root: Path):
    spec = importlib.util.spec_from_file_location("vuv_vm", root / "scripts" / "vm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel_deb(image_dir: Path, work: Path, ctx: Context) -> Path:
    """The kernel package the e2e image was built from (its stamp names it)."""
    stamp = (image_dir / "stamp").read_text()
    m = re.search(r"^kernel (\S+) (\S+)", stamp, re.M)
    if not m:
        raise RuntimeError(f"{image_dir}/stamp does not name the kernel package")
    package, version = m.groups()
    cache = Path(os.environ.get("VUV_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "vhost-user-vsock")
    for folder in (cache / "debs", work):
        found = sorted(folder.glob(f"{package}_*.deb")) if folder.exists() else []
        if found:
            return found[0]
    ctx.log(f"downloading {package}={version} for the extra guest modules")
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=work, check=True,
                   capture_output=True)
    return sorted(work.glob(f"{package}_*.deb"))[0]


def cpio_entry(out, name: str, mode: int, data: bytes, inode: int) -> None:
    encoded = name.encode() + b"\0"
    nlink = 2 if mode & 0o040000 else 1
    fields = [inode, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
    out.write(data + b"\0" * (-len(data) % 4))


def build_initramfs(ctx: Context, image_dir: Path, xfer: Path) -> Path:
    """e2e initramfs + (xfer, bench-setup, the alternatives' modules)."""
    work = ctx.build_dir / "bench" / "vm"
    work.mkdir(parents=True, exist_ok=True)
    out = work / "initramfs-bench.cpio.gz"
    inputs = [image_dir / "initramfs.cpio.gz", xfer, Path(__file__)]
    if out.exists() and all(out.stat().st_mtime >= p.stat().st_mtime for p in inputs):
        return out
    deb = kernel_deb(image_dir, work, ctx)
    tar_proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    modules: dict[str, bytes] = {}
    with tarfile.open(fileobj=tar_proc.stdout, mode="r|") as tar:
        for member in tar:
            base = os.path.basename(member.name)
            if base.endswith(".ko") and base[:-3] in EXTRA_MODULES and "/kernel/" in member.name:
                modules[base[:-3]] = tar.extractfile(member).read()
    tar_proc.wait()
    missing = [m for m in EXTRA_MODULES if m not in modules]
    if missing:
        ctx.notes.append(f"guest kernel package has no {', '.join(missing)} module (built in?)")
    entries = [("bin", 0o040755, b""), ("lib", 0o040755, b""), ("lib/modules", 0o040755, b""),
               ("lib/modules/bench", 0o040755, b""), ("bin/xfer", 0o100755, xfer.read_bytes()),
               ("bin/bench-setup", 0o100755, GUEST_SETUP.encode())]
    entries += [(f"lib/modules/bench/{name}.ko", 0o100644, data) for name, data in sorted(modules.items())]
    extra = work / "extra.cpio"
    with open(extra, "wb") as f:
        for inode, (name, mode, data) in enumerate(entries, start=1):
            cpio_entry(f, name, mode, data, inode)
        cpio_entry(f, "TRAILER!!!", 0, b"", 0)
    # Concatenated gzip'd archives: the kernel unpacks them in order.
    with open(out, "wb") as f:
        f.write((image_dir / "initramfs.cpio.gz").read_bytes())
        f.write(gzip.compress(extra.read_bytes(), mtime=0))
    return out


class BenchVm:
    """vm.Vm plus the alternatives' devices and our initramfs."""

    def __init__(self, ctx: Context, vm_module, daemon: Path, image_dir: Path, initrd: Path,
                 daemon_args: tuple[str, ...] = (), packed: bool = False):
        self.ctx = ctx
        self.host_g2h_port = free_port()
        self.fwd = {name: free_port() for name in ("h2g", "rtt", "connect")}
        outer = self

        class Qemu(vm_module.Qemu):
            def command_line(self):
                args = super().command_line()
                args[args.index("-initrd") + 1] = str(initrd)
                vsock = next(i for i, a in enumerate(args) if a.startswith("vhost-user-vsock-pci,"))
                args[vsock] = args[vsock].replace(",packed=on", "") + (",packed=on" if packed else "")
                forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{port}-:{guest}" for port, guest in (
                    (outer.fwd["h2g"], 5202), (outer.fwd["rtt"], 5203), (outer.fwd["connect"], 5204)))
                return args + ["-netdev", f"user,id=n0,{forwards}", "-device", "virtio-net-pci,netdev=n0",
                               "-device", "virtio-serial-pci",
                               "-chardev", f"socket,id=ser0,path={outer.serial_path},server=on,wait=off",
                               "-device", "virtserialport,chardev=ser0,name=bench"]

        self.metrics_port = free_port()
        self.vm = vm_module.Vm(daemon_binary=str(daemon), image_dir=str(image_dir),
                               daemon_args=["--log-level", "warn", "--metrics", f"127.0.0.1:{self.metrics_port}",
                                            *daemon_args])
        self.serial_path = os.path.join(self.vm.workdir, "serial.sock")
        self.vm.qemu = Qemu(str(image_dir), self.vm.workdir, self.vm.daemon.socket, memory_mib=512)
        self.port_device = ""

    def start(self) -> float:
        seconds = self.vm.start()
        result = self.vm.shell.run("bench-setup", timeout=30)
        m = re.search(r"port=(\S+)", result.output)
        if result.status != 0 or not m:
            raise RuntimeError(f"guest setup failed: {result.output.strip()}")
        self.port_device = m.group(1)
        return seconds

    def stop(self) -> None:
        self.vm.stop()

    def device_counters(self) -> dict[str, float]:
        """Running totals under the per-MiB names; run_one takes differences."""
        return {**read_device_counters(self.metrics_port),
                **read_daemon_process_counters(self.vm.daemon.proc.pid)}

    def cpu_seconds(self) -> dict[str, float]:
        """Host CPU of the daemon and of QEMU (TCG: the guest kernel and its
        device emulation run in QEMU's threads)."""
        return {"cpu_daemon_s": process_cpu_seconds(self.vm.daemon.proc.pid),
                "cpu_qemu_s": process_cpu_seconds(self.vm.qemu.proc.pid)}


def run_pair(bvm: BenchVm, xfer: str, name: str, guest_cmd: str, host_argv: list[str], host_first: bool,
             guest_listens: bool, timeout: float) -> dict:
    """Runs one transfer: a guest job and a host xfer; returns the host's JSON.
    Raises RuntimeError with both sides' output on any failure."""
    import json
    shell = bvm.vm.shell
    host = None
    try:
        if host_first:   # the host listens; wait for it before the guest connects
            host = subprocess.Popen(host_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = host.stdout.readline()
            if line.strip() != "listening":
                raise RuntimeError(f"host xfer did not listen: {line}{host.stderr.read()}")
        shell.start_job(name, f"exec xfer {guest_cmd}", timeout=int(timeout))
        if guest_listens and not shell.wait_job_output(name, "listening", timeout=30):
            raise RuntimeError(f"guest xfer did not listen: {shell.wait_job(name, timeout=10).output}")
        if host is None:
            host = subprocess.Popen(host_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = host.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            host.kill()
            out, err = host.communicate()
            err += f"\n(host side timed out after {timeout:.0f} s)"
        guest = shell.wait_job(name, timeout=timeout)
        if host.returncode != 0 or guest.status != 0:
            raise RuntimeError(f"{name}: host exit {host.returncode}: {err.strip()[-400:]} | guest exit "
                               f"{guest.status}: {guest.output.strip()[-400:]}")
        lines = [x for x in out.splitlines() if x.startswith("{")]
        if not lines:
            raise RuntimeError(f"{name}: no result from the host side: {out}")
        return json.loads(lines[-1])
    finally:
        if host is not None and host.poll() is None:
            host.kill()
            host.wait()


def round_plan(bvm: BenchVm, ctx: Context, sizes: dict[str, str]) -> list[tuple]:
    """(measurement id, guest command, host argv, host_first, guest_listens)."""
    uds = bvm.vm.uds_path
    x = str(ctx.binary(XFER_BINARY))
    dev = bvm.port_device
    rtt = "200" if ctx.smoke else "2000"
    conns = "100" if ctx.smoke else "500"
    plan = []
    for t in ("vsock", "net", "serial"):
        n = sizes[t]
        if t == "vsock":
            g2h = (f"send vsock-connect:2:5201 --bytes {n} --wait-go",
                   [x, "recv", f"unix-listen:{uds}_5201", "--bytes", n, "--send-go"], True, False)
            h2g = (f"recv vsock-listen:5202 --bytes {n} --send-ack",
                   [x, "send", f"hybrid:{uds}:5202", "--bytes", n, "--wait-ack"], False, True)
            rt = ("echo vsock-listen:5203", [x, "rtt", f"hybrid:{uds}:5203", "--count", rtt], False, True)
            cn = (f"serve vsock-listen:5204 --count {conns}",
                  [x, "dial", f"hybrid:{uds}:5204", "--count", conns], False, True)
        elif t == "net":
            g2h = (f"send tcp-connect:10.0.2.2:{bvm.host_g2h_port} --bytes {n} --wait-go",
                   [x, "recv", f"tcp-listen:{bvm.host_g2h_port}", "--bytes", n, "--send-go"], True, False)
            h2g = (f"recv tcp-listen:5202 --bytes {n} --send-ack",
                   [x, "send", f"tcp-connect:127.0.0.1:{bvm.fwd['h2g']}", "--bytes", n, "--wait-ack"], False, True)
            rt = ("echo tcp-listen:5203", [x, "rtt", f"tcp-connect:127.0.0.1:{bvm.fwd['rtt']}", "--count", rtt],
                  False, True)
            cn = (f"serve tcp-listen:5204 --count {conns}",
                  [x, "dial", f"tcp-connect:127.0.0.1:{bvm.fwd['connect']}", "--count", conns], False, True)
        else:
            # The port has no connection of its own: the host side connects to
            # QEMU's chardev socket, the guest opens the port device.
            g2h = (f"send file:{dev} --bytes {n} --wait-go",
                   [x, "recv", f"unix-connect:{bvm.serial_path}", "--bytes", n, "--send-go"], False, False)
            h2g = (f"recv file:{dev} --bytes {n} --send-ack",
                   [x, "send", f"unix-connect:{bvm.serial_path}", "--bytes", n, "--wait-ack"], False, False)
            rt = (f"echo file:{dev} --bytes {int(rtt) + 100}",
                  [x, "rtt", f"unix-connect:{bvm.serial_path}", "--count", rtt], False, False)
            cn = None
        plan += [(f"vm.{t}.g2h",) + g2h, (f"vm.{t}.h2g",) + h2g, (f"vm.{t}.rtt",) + rt]
        if cn:
            plan.append((f"vm.{t}.connect",) + cn)
    return plan


def prerequisites(ctx: Context) -> Optional[str]:
    for tool in ("qemu-system-x86_64", "dpkg-deb"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            return f"{tool} is not installed"
    if not (ctx.root / "scripts" / "vm.py").exists():
        return "scripts/vm.py (the e2e VM runner) does not exist yet"
    if not ctx.binary(XFER_BINARY).exists():
        return f"{XFER_BINARY} not built"
    return None


def start_failed(ctx: Context, rows: list[Result], what: str, exc: Exception) -> None:
    """A VM that cannot start although QEMU and the image are here: in the
    smoke run (CI) that is a failure, never a quiet "not measured"."""
    reason = f"{what}: {str(exc).splitlines()[0][:200]}"
    for r in rows:
        if ctx.smoke:
            r.errors.append(reason)
        else:
            r.not_measured = reason


def run(ctx: Context, results: dict[str, Result]) -> None:
    ms = measurements(ctx)
    reason = prerequisites(ctx)
    if reason:
        mark_not_measured(ms, results, reason)
        return
    for m in ms:
        results[m.id] = Result(m)
    vm_module = load_vm_module(ctx.root)
    try:
        image_dir = Path(vm_module.guest_image_dir())
        initrd = build_initramfs(ctx, image_dir, ctx.binary(XFER_BINARY))
        bvm = BenchVm(ctx, vm_module, ctx.binary("vhost-user-vsock"), image_dir, initrd)
    except Exception as exc:  # noqa: BLE001 - any setup failure means "cannot measure", with the reason
        start_failed(ctx, [results[m.id] for m in ms], "VM setup failed", exc)
        return
    try:
        try:
            boot = bvm.start()
        except Exception as exc:  # noqa: BLE001
            ctx.log(bvm.vm.logs(40))
            start_failed(ctx, [results[m.id] for m in ms], "VM did not start", exc)
            return
        accel = bvm.vm.qemu.accel
        ctx.notes.append(f"VM: QEMU {qemu_version()}, accel={accel}, 1 vCPU, 512 MiB, guest image "
                         f"{image_dir.name} ({(image_dir / 'stamp').read_text().splitlines()[0]}); "
                         f"daemon + VM start {boot:.1f} s. Processes unpinned.")
        # vsock and virtio-serial move the same amount, so their ratio is not
        # skewed by start-up costs; user networking is 5-10x slower, so less.
        sizes = {"vsock": "16M", "net": "16M", "serial": "16M"} if ctx.smoke else \
            {"vsock": "256M", "net": "128M", "serial": "256M"}
        plan = round_plan(bvm, ctx, sizes)
        for round_index in range(ctx.runs):
            ctx.log(f"VM round {round_index + 1}/{ctx.runs}")
            for mid, guest_cmd, host_argv, host_first, guest_listens in plan:
                r = results[mid]
                if r.errors:
                    continue
                run_one(ctx, bvm, r, mid, guest_cmd, host_argv, host_first, guest_listens)
    finally:
        bvm.stop()
    run_tx_buffer_rows(ctx, results, vm_module, image_dir, initrd, sizes)
    run_packed_rows(ctx, results, vm_module, image_dir, initrd, sizes)


def run_one(ctx: Context, bvm: BenchVm, r: Result, mid: str, guest_cmd: str, host_argv: list[str],
            host_first: bool, guest_listens: bool) -> None:
    started = time.monotonic()
    try:
        cpu_before = bvm.cpu_seconds()
        vsock = mid.startswith(("vm.vsock.", "vm.vsock_packed."))
        counters_before = bvm.device_counters() if vsock else {}
        obj = run_pair(bvm, str(ctx.binary(XFER_BINARY)), mid.replace(".", "_"), guest_cmd, host_argv,
                       host_first, guest_listens, timeout=60 if ctx.smoke else 300)
        if "bytes" in obj and vsock:
            # Includes the job start-up over the serial shell: a small overestimate.
            obj.update({k: v - cpu_before[k] for k, v in bvm.cpu_seconds().items()})
            mib = obj["bytes"] / 2**20
            obj.update({k: (v - counters_before[k]) / mib for k, v in bvm.device_counters().items()})
        value = float(obj[r.measurement.key])
        r.values.append(value)
        r.extra.append(obj)
        ctx.log(f"{mid:<34} {value:12.4g} {r.measurement.unit:<7} ({time.monotonic() - started:.1f} s)")
    except Exception as exc:  # noqa: BLE001 - recorded as this figure's failure
        r.errors.append(str(exc))
        ctx.log(f"{mid}: FAILED: {exc}")
        if not bvm.vm.daemon.alive():
            raise RuntimeError("the daemon died during the VM benchmark") from exc


def run_tx_buffer_rows(ctx: Context, results: dict[str, Result], vm_module, image_dir: Path, initrd: Path,
                       sizes: dict[str, str]) -> None:
    """guest→host with a larger buf_alloc: one boot per setting, `runs` transfers each."""
    for suffix, _, value in TX_BUFFER_ROWS:
        mid = f"vm.vsock.g2h.{suffix}"
        r = results[mid]
        try:
            bvm = BenchVm(ctx, vm_module, ctx.binary("vhost-user-vsock"), image_dir, initrd,
                          daemon_args=("--tx-buffer-size", str(value)))
            bvm.start()
        except Exception as exc:  # noqa: BLE001
            start_failed(ctx, [r], f"VM with --tx-buffer-size {value} did not start", exc)
            continue
        try:
            plan = {p[0]: p[1:] for p in round_plan(bvm, ctx, sizes)}
            guest_cmd, host_argv, host_first, guest_listens = plan["vm.vsock.g2h"]
            for _ in range(ctx.runs):
                if r.errors:
                    break
                run_one(ctx, bvm, r, mid, guest_cmd, host_argv, host_first, guest_listens)
        finally:
            bvm.stop()


def run_packed_rows(ctx: Context, results: dict[str, Result], vm_module, image_dir: Path, initrd: Path,
                    sizes: dict[str, str]) -> None:
    """The vsock rounds again on a boot with packed=on, `runs` of each."""
    rows = [results[f"vm.vsock_packed.{row}"] for row in PACKED_ROWS]
    try:
        bvm = BenchVm(ctx, vm_module, ctx.binary("vhost-user-vsock"), image_dir, initrd, packed=True)
        bvm.start()
    except Exception as exc:  # noqa: BLE001
        start_failed(ctx, rows, "VM with packed=on did not start", exc)
        return
    try:
        plan = {p[0]: p[1:] for p in round_plan(bvm, ctx, sizes)}
        for _ in range(ctx.runs):
            for row, r in zip(PACKED_ROWS, rows):
                if not r.errors:
                    run_one(ctx, bvm, r, r.measurement.id, *plan[f"vm.vsock.{row}"])
    finally:
        bvm.stop()


def qemu_version() -> str:
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"
