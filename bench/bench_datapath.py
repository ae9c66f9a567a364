#!/usr/bin/env python3
"""Datapath benchmark: what the eBPF program costs, next to what a user would
otherwise reach for (an nftables ruleset), measured in one run.

Two pods on one node (tests/kernelnode.py); a persistent client process and
the server, both pinned to the same core with taskset and run SCHED_FIFO (chrt), so the figures compare
CPU work, not scheduling luck. Each configuration is measured in short blocks,
each between two baseline blocks (A-B-A), and reported as the median ratio:
on a shared machine this pairing is what keeps neighbours' load out of the
ratios. Metrics per block:

  rr    request/response round trip (1 byte each way) on one TCP connection
  crr   connect + 1-byte request/response + close (policy is evaluated per
        connection here; established traffic only sees conntrack)
  bulk  TCP throughput, 64 KiB writes for a fixed time

Configurations: no filtering (baseline), a clsact hook running an empty
program on both veths (the cost of the tc hook itself, which any tc-based
datapath pays), the program with 10 and 10,000 policy entries per endpoint, and the same policy
as an nftables forward chain with 10 and 10,000 rules (`ct state
established accept` first, as users write it; the matching rule last, as the
worst case of a linear ruleset). The program's own cost per run comes from
kernel.bpf_stats_enabled (run_time_ns / run_cnt of both endpoints'
programs). Goals: rr ratio <= 1.03 at 10,000 entries, and ahead of nftables
at 10,000 rules.

IPv6: the pods are dual-stack (wired as ciliate-cni wires them) and a second
client measures rr and crr to the server's IPv6 address in every block, so
each configuration's IPv6 ratio is taken against IPv6 baseline blocks of the
same run. One policy covers both families (identities, not addresses).
Goal: the program's IPv6 ratios at 10,000 entries within 2 % of its IPv4
ones. (The nftables rulesets name IPv4 addresses: their blocks measure IPv4
only.)

    flock /tmp/ciliate-kernel.lock .venv/bin/python bench/bench_datapath.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv6Address
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policy.compiled import Direction, Protocol, Verdict  # noqa: E402
from redirect import bpfsys  # noqa: E402
from redirect.datapath import Datapath  # noqa: E402
from redirect import tc  # noqa: E402
from tests.datapath.support import endpoint, rule, state, Ep  # noqa: E402
from tests.kernelnode import PodSpec, kernel_node, wire_ipv6  # noqa: E402

PORT = 5001
CPU = "0"
CLIENT6, SERVER6, NODE6 = "fd00:201::2", "fd00:201::3", "fd00:201::fffe"

SERVER = r"""
import socket, sys, threading
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mode = c.recv(1)
    if mode == b"b":
        while c.recv(1 << 20):
            pass
        c.close(); return
    c.sendall(b"k")
    while True:
        d = c.recv(1)
        if not d: break
        c.sendall(d)
    c.close()
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # both families on one socket
s.bind(("::", int(sys.argv[1]))); s.listen(128)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import json, socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
def conn(m):
    c = socket.create_connection((ip, port), timeout=5)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(m)
    return c
rr = None
print("ready", flush=True)
for line in sys.stdin:
    mode, n = line.split(); n = int(n)
    if mode == "rr":
        if rr is None:
            rr = conn(b"r"); assert rr.recv(1) == b"k"
        t = time.perf_counter_ns()
        for _ in range(n):
            rr.sendall(b"x"); rr.recv(1)
        out = (time.perf_counter_ns() - t) / n / 1000
    elif mode == "crr":
        t = time.perf_counter_ns()
        for _ in range(n):
            c = conn(b"r"); c.recv(1); c.sendall(b"x"); c.recv(1); c.close()
        out = (time.perf_counter_ns() - t) / n / 1000
    else:
        c = conn(b"b"); buf = b"\0" * 65536; sent = 0
        t = time.perf_counter(); end = t + n / 1000
        while time.perf_counter() < end:
            sent += c.send(buf)
        dt = time.perf_counter() - t
        c.close()
        out = sent * 8 / dt / 1e9
    print(json.dumps(out), flush=True)
"""


class Client:
    """The persistent client process in the client pod, pinned to CPU."""

    def __init__(self, pod, server_ip) -> None:
        argv = pod.argv(["chrt", "-f", "10", "taskset", "-c", CPU, sys.executable, "-u", "-c", CLIENT, str(server_ip), str(PORT)])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def run(self, mode: str, n: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{mode} {n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client died during {mode}")
        return float(json.loads(line))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


NFT_HEAD = """table inet cdpbench {
  chain policy_fwd {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
"""


def nft_ruleset(n: int, client: str, server: str) -> str:
    lines = [NFT_HEAD]
    for i in range(n - 1):
        lines.append(f"    ip saddr {client} ip daddr 10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256} tcp dport 8080 accept\n")
    lines.append(f"    ip saddr {client} ip daddr {server} tcp dport {PORT} accept\n")
    # replies (the reverse direction) of new connections are established
    lines.append("  }\n}\n")
    return "".join(lines)


def policy(n: int, a: Ep, b: Ep):
    """n entries per endpoint; the one the benchmark flow matches is one of them."""
    a_rules = [rule(100000 + i, Direction.EGRESS, Protocol.TCP, 8080) for i in range(n - 1)]
    a_rules.append(rule(b.identity, Direction.EGRESS, Protocol.TCP, PORT))
    b_rules = [rule(100000 + i, Direction.INGRESS, Protocol.TCP, 8080) for i in range(n - 1)]
    b_rules.append(rule(a.identity, Direction.INGRESS, Protocol.TCP, PORT))
    return state(n, [endpoint(a, a_rules, ipv6=IPv6Address(CLIENT6)), endpoint(b, b_rules, ipv6=IPv6Address(SERVER6))])


METRICS = (("rr_us", "rr"), ("crr_us", "crr"), ("bulk_gbps", "bulk"))
METRICS6 = (("rr6_us", "rr"), ("crr6_us", "crr"))  # measured by the IPv6 client


def settle(client: Client) -> None:
    """Let a switch's aftermath (RCU frees of 10k nft rules, JIT, qdisc
    set-up) finish before the next block, so it is not billed to it."""
    time.sleep(0.2)
    client.run("rr", 200)


def block(client: Client, args, client6: Client | None = None) -> dict[str, float]:
    sizes = {"rr": args.rr, "crr": args.crr, "bulk": args.bulk_ms}
    out = {key: client.run(mode, sizes[mode]) for key, mode in METRICS}
    if client6 is not None:
        out.update({key: client6.run(mode, sizes[mode]) for key, mode in METRICS6})
    return out


def tcp_packet(src, dst, sport: int, dport: int, flags: int) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 1000, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src.packed, dst.packed)
    return eth + ip + tcp + b"\0" * 6


def hot_cost(dp: Datapath, src, dst) -> dict[str, int]:
    """ns per run with hot caches (BPF_PROG_TEST_RUN, 1e6 repeats, best of 3)
    for an established packet, and a constant program for reference."""
    key = struct.pack("=4s4s2s2sB3x", src.packed, dst.packed, struct.pack("!H", 40000), struct.pack("!H", PORT), 6)
    bpfsys.update(dp.maps.fds["ct"], key, struct.pack("=QHB5x", 2**63, 0, 0))
    pkt = tcp_packet(src, dst, 40000, PORT, 0x10)
    out = {}
    const = bpfsys.load_constant_program(bpfsys.TC_ACT_OK, "cdp_const")
    fd = bpfsys.obj_get(dp.pin_dir / "ciliate_prog_1_from")
    try:
        for name, f in (("empty program", const), ("from_container, established", fd)):
            out[name] = min(bpfsys.test_run(f, pkt, 1_000_000)[1] for _ in range(3))
    finally:
        os.close(const)
        os.close(fd)
    return out


def set_stats(on: bool) -> str:
    p = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = p.read_text().strip()
    p.write_text("1" if on else "0")
    return old


def prog_totals(dp: Datapath, ids: list[int]) -> dict[str, tuple[int, int]]:
    """hook -> (run_time_ns, run_cnt) summed over the endpoints' programs
    (endpoints share one program: each counted once)."""
    out: dict[str, tuple[int, int]] = {}
    seen: set[int] = set()
    for i in ids:
        for hook, info in dp.prog_stats(i).items():
            if info.id in seen:
                continue
            seen.add(info.id)
            t, c = out.get(hook, (0, 0))
            out[hook] = (t + info.run_time_ns, c + info.run_cnt)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    ap.add_argument("--pairs", type=int, default=None, help="A-B-A pairs per configuration (default 15)")
    ap.add_argument("--program", type=Path, default=None, help="an alternative bpf_lxc.c to measure (A/B a change)")
    ap.add_argument("--only-program", action="store_true", help="skip the nftables and empty-hook configurations")
    args = ap.parse_args()
    args.rr, args.crr, args.bulk_ms, pairs = (2000, 100, 150, 15) if not args.quick else (500, 30, 60, 4)
    args.pairs = args.pairs or pairs

    pin_dir = Path(f"/sys/fs/bpf/cdp-bench-{secrets.token_hex(3)}")
    state_dir = Path(tempfile.mkdtemp(prefix="cdp-bench-"))
    values: dict[str, list[dict[str, float]]] = {"baseline": []}
    ratios: dict[str, list[dict[str, float]]] = {}
    ns_per_run: dict[str, dict[str, float]] = {}
    apply_ms: dict[str, float] = {}
    old_stats = None
    hot: dict[str, int] = {}
    with kernel_node([PodSpec("client", "10.201.0.2"), PodSpec("server", "10.201.0.3")], prefix="cdb") as node:
        a_pod, b_pod = node.pods["client"], node.pods["server"]
        server = subprocess.Popen(b_pod.argv(["chrt", "-f", "10", "taskset", "-c", CPU, sys.executable, "-c", SERVER, str(PORT)]),
                                  stdout=subprocess.PIPE, text=True)
        dp = None
        client = client6 = None
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            wire_ipv6(node.netns, a_pod, CLIENT6, NODE6)
            wire_ipv6(node.netns, b_pod, SERVER6, NODE6)
            client = Client(a_pod, b_pod.ip)
            client6 = Client(a_pod, SERVER6)
            for n in (10, 10_000):
                (state_dir / f"rules-{n}.nft").write_text(nft_ruleset(n, str(a_pod.ip), str(b_pod.ip)))
            extra = {"program_source": args.program} if args.program else {}
            dp = Datapath(pin_dir, state_dir / "eps", netns=node.netns, **extra)
            a, b = Ep(1, 256, a_pod), Ep(2, 257, b_pod)
            states = {n: policy(n, a, b) for n in (10, 10_000)}

            def no_program() -> None:
                for ifname in (a_pod.host_ifname, b_pod.host_ifname):
                    tc.detach(ifname, node.netns)

            def program_on() -> None:
                # First time compiles; afterwards restores from the pinned programs.
                dp.attach_endpoint(1, a_pod.host_ifname, a_pod.ip, 256, CLIENT6)
                dp.attach_endpoint(2, b_pod.host_ifname, b_pod.ip, 257, SERVER6)

            def load_policy(n: int) -> None:
                program_on()
                t0 = time.perf_counter()
                res = dp.apply(states[n])
                apply_ms.setdefault(f"program {n} entries", (time.perf_counter() - t0) * 1000)
                assert res.ok, res.failed
                no_program()

            def empty_hook() -> None:
                fd = bpfsys.load_constant_program(bpfsys.TC_ACT_OK, "cdp_empty")
                try:
                    for ifname in (a_pod.host_ifname, b_pod.host_ifname):
                        tc.attach(ifname, fd, fd, "cdp_empty", node.netns)
                finally:
                    os.close(fd)

            def nft(n: int):
                return lambda: subprocess.run(node.argv(["nft", "-f", str(state_dir / f"rules-{n}.nft")]), check=True)

            def nft_off() -> None:
                subprocess.run(node.argv(["nft", "delete", "table", "inet", "cdpbench"]), check=True)

            # (name, prepare once, switch on, switch off). Each measured block
            # of a configuration sits between two baseline blocks (A-B-A), and
            # its ratio is taken against their mean, so load from neighbours
            # and drift hit both sides of every ratio alike.
            # (name, prepare once, switch on, switch off, IPv6 measured too)
            configs = [
                ("tc hook, empty program", None, empty_hook, no_program, True),
                ("nftables 10 rules", None, nft(10), nft_off, False),
                ("nftables 10000 rules", None, nft(10_000), nft_off, False),
                ("program 10 entries", lambda: load_policy(10), program_on, no_program, True),
                ("program 10000 entries", lambda: load_policy(10_000), program_on, no_program, True),
            ]
            if args.only_program:
                configs = [c for c in configs if c[0].startswith("program")]
            block(client, args, client6)  # warm-up, discarded
            for name, prepare, on, off, six in configs:
                if prepare:
                    prepare()
                before = block(client, args, client6)
                for _ in range(args.pairs):
                    on()
                    try:
                        settle(client)
                        mid = block(client, args, client6 if six else None)
                    finally:
                        off()
                    settle(client)
                    after = block(client, args, client6)
                    values["baseline"].append(before)
                    values.setdefault(name, []).append(mid)
                    ratios.setdefault(name, []).append(
                        {k: mid[k] / ((before[k] + after[k]) / 2) for k in mid})
                    before = after

            # The program's own cost, in a separate pass: the statistics
            # themselves cost a clock read or two per run.
            old_stats = set_stats(True)
            for n in (10, 10_000):
                load_policy(n)
                program_on()
                before_t = prog_totals(dp, [1, 2])
                client.run("rr", args.rr * 2)
                after_t = prog_totals(dp, [1, 2])
                ns_per_run[f"program {n} entries"] = {
                    h: (after_t[h][0] - before_t[h][0]) / max(1, after_t[h][1] - before_t[h][1]) for h in after_t
                }
                before_t = prog_totals(dp, [1, 2])
                client6.run("rr", args.rr * 2)
                after_t = prog_totals(dp, [1, 2])
                ns_per_run[f"program {n} entries IPv6"] = {
                    h: (after_t[h][0] - before_t[h][0]) / max(1, after_t[h][1] - before_t[h][1]) for h in after_t
                }
            set_stats(old_stats == "1")
            old_stats = None
            hot = hot_cost(dp, a_pod.ip, b_pod.ip)  # statistics off
        finally:
            if old_stats is not None:
                set_stats(old_stats == "1")
            for c in (client, client6):
                if c is not None:
                    c.close()
            server.kill()
            server.wait()
            if dp is not None:
                dp.teardown()
            shutil.rmtree(pin_dir, ignore_errors=True)
            shutil.rmtree(state_dir, ignore_errors=True)

    keys = [k for k, _ in METRICS + METRICS6]
    med = {name: {k: statistics.median(v[k] for v in vs) for k in keys if k in vs[0]} for name, vs in values.items()}
    q = {name: {k: statistics.median(r[k] for r in rs) for k in keys if k in rs[0]} for name, rs in ratios.items()}
    q["baseline"] = {k: 1.0 for k in keys}
    print(f"same-core pinned (cpu {CPU}); {args.pairs} A-B-A pairs per configuration; per block "
          f"rr={args.rr} round trips on one connection, crr={args.crr} connections, bulk {args.bulk_ms} ms")
    print("values: medians over blocks; ratio: median over pairs of block / mean of the baseline blocks around it")
    print(f"{'configuration':24} {'rr us':>8} {'rr ratio':>9} {'crr us':>8} {'crr ratio':>9} {'bulk Gb/s':>10} "
          f"{'bulk ratio':>10} {'ns/run from,to':>15} {'apply ms':>9}")
    names = ["baseline"] + [c[0] for c in configs]
    for name in names:
        r, rq = med[name], q[name]
        ns = ns_per_run.get(name)
        ns_txt = f"{ns['from']:7.0f},{ns['to']:7.0f}" if ns is not None else "              -"
        ap_ms = apply_ms.get(name)
        print(f"{name:24} {r['rr_us']:8.2f} {rq['rr_us']:9.3f} {r['crr_us']:8.1f} "
              f"{rq['crr_us']:9.3f} {r['bulk_gbps']:10.2f} {rq['bulk_gbps']:10.3f} "
              f"{ns_txt} "
              f"{(format(ap_ms, '9.1f') if ap_ms is not None else '        -')}")
    print("\nIPv6 (same blocks, the client's second connection goes to the server's IPv6 address)")
    print(f"{'configuration':24} {'rr us':>8} {'rr ratio':>9} {'crr us':>8} {'crr ratio':>9} {'ns/run from,to':>15}")
    for name in names:
        r, rq = med[name], q[name]
        ns = ns_per_run.get(f"{name} IPv6")
        ns_txt = f"{ns['from']:7.0f},{ns['to']:7.0f}" if ns is not None else "              -"
        if "rr6_us" in r:
            print(f"{name:24} {r['rr6_us']:8.2f} {rq['rr6_us']:9.3f} {r['crr6_us']:8.1f} {rq['crr6_us']:9.3f} {ns_txt}")
    p = q["program 10000 entries"]
    gaps = {m: (p[f"{m}6_us"] - p[f"{m}_us"]) * 100 for m in ("rr", "crr")}
    within = all(abs(g) <= 2.0 for g in gaps.values())
    print(f"goal IPv6 within 2 % of IPv4 at 10k entries (ratio IPv6 - ratio IPv4): rr {gaps['rr']:+.1f} %, "
          f"crr {gaps['crr']:+.1f} % ({'met' if within else 'NOT met'})")
    if args.only_program:
        return
    p10k, n10k = q["program 10000 entries"], q["nftables 10000 rules"]
    print(f"goal rr ratio <= 1.03 at 10k entries: {p10k['rr_us']:.3f} ({'met' if p10k['rr_us'] <= 1.03 else 'NOT met'})")
    ahead = p10k["rr_us"] <= n10k["rr_us"] and p10k["crr_us"] <= n10k["crr_us"]
    print(f"goal ahead of nftables at 10k (ratios): rr {p10k['rr_us']:.3f} vs {n10k['rr_us']:.3f}, "
          f"crr {p10k['crr_us']:.3f} vs {n10k['crr_us']:.3f} ({'met' if ahead else 'NOT met'})")
    e = q["tc hook, empty program"]
    print(f"program 10000 entries over an empty tc hook (the program's own share): rr {p10k['rr_us'] / e['rr_us']:.3f}, "
          f"crr {p10k['crr_us'] / e['crr_us']:.3f}, bulk {p10k['bulk_gbps'] / e['bulk_gbps']:.3f}")
    print("hot-cache cost per run (BPF_PROG_TEST_RUN, stats off): " + ", ".join(f"{k} {v} ns" for k, v in hot.items()))
    print("ns/run: mean cost of one run of from_container / to_container (both endpoints) under rr, "
          "kernel.bpf_stats_enabled=1 (includes the statistics' own clock reads)")


if __name__ == "__main__":
    main()
