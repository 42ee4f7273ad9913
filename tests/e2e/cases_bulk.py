"""Bulk transfers with checksums and many concurrent connections."""
from e2e_lib import e2e_test, expect, parse_fields, sha256_lines

BULK = 64 << 20
BLOB = 1 << 20
CONCURRENT = 100


@e2e_test("bulk")
def bulk_64mib_guest_to_host(t):
    path = f"{t.uds}_6001"
    host = t.host_tool("ulisten", path, "--recv", BULK, "--seed", 5, "--expect-eof", "--sha256", "--quiet",
                       "--timeout", 240)
    try:
        t.wait_path(path)
        result = t.guest(f"vsock_tool connect 2 6001 --send {BULK} --seed 5 --sha256 --timeout 240", timeout=270)
        expect(result.status == 0, f"guest sender failed:\n{result.output}")
        host_out = t.finish_host(host, "host receiver", timeout=60)
    finally:
        host.kill()
    want = t.expected_sha256(BULK, 5)
    guest_sent = sha256_lines(result.output)[0][0]
    host_received = sha256_lines(host_out)[0][1]
    expect(guest_sent == want, f"guest sent sha256 {guest_sent}, pattern is {want}")
    expect(host_received == want, f"host received sha256 {host_received}, guest sent {want}")
    fields = parse_fields(result.output)
    return f"sha256 {want[:16]}... matches; {fields['tx_mibps']} MiB/s in {fields['elapsed']}"


@e2e_test("bulk")
def bulk_64mib_host_to_guest(t):
    t.start_guest_listener("bulk", f"vsock_tool listen 6002 --recv {BULK} --seed 6 --expect-eof --sha256 "
                           "--timeout 240", timeout=270)
    host = t.host_tool("uconnect", t.uds, "--hybrid", 6002, "--send", BULK, "--seed", 6, "--sha256",
                       "--timeout", 240)
    host_out = t.finish_host(host, "host sender", timeout=270)
    guest_out = t.finish_guest_job("bulk", "guest receiver", timeout=120)
    want = t.expected_sha256(BULK, 6)
    host_sent = sha256_lines(host_out)[0][0]
    guest_received = sha256_lines(guest_out)[0][1]
    expect(host_sent == want, f"host sent sha256 {host_sent}, pattern is {want}")
    expect(guest_received == want, f"guest received sha256 {guest_received}, host sent {want}")
    fields = parse_fields(guest_out)
    return f"sha256 {want[:16]}... matches; {fields['rx_mibps']} MiB/s in {fields['elapsed']}"


@e2e_test("bulk")
def concurrent_100_each_way(t):
    """100 guest->host and 100 host->guest connections at the same time, each
    echoing its own 1 MiB blob (seed per connection), verified byte by byte."""
    guest_out, host_out = t.echo_both_ways(7001, conns=CONCURRENT, size=BLOB, seeds=(1000, 2000), timeout=400)
    g = parse_fields(guest_out)
    h = parse_fields(host_out)
    expect(int(g["conns"]) == CONCURRENT and int(h["conns"]) == CONCURRENT, "connection count")
    expect(int(g["recv"]) == CONCURRENT * BLOB and int(h["recv"]) == CONCURRENT * BLOB, "byte count")
    return (f"guest->host {g['elapsed']} ({g['rx_mibps']} MiB/s echoed), "
            f"host->guest {h['elapsed']} ({h['rx_mibps']} MiB/s echoed)")
