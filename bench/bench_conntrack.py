#!/usr/bin/env python3
"""Conntrack under one pod's SYN flood, with the default table (65,536 entries).

Three pods on one node (tests/kernelnode.py): a floods raw SYNs at a world
address the node blackholes (nobody answers), b opens connections to c
meanwhile. Figures: how fast the table fills and how full; how long the
flood's entries live (the SYN-only lifetime, 60 s, where answered TCP gets
6 h); what the fill will be once they expired (map_fill at a later clock);
b's connections opened while the table is full; and the cost of reading the
fill, against the key walk it replaced (the baseline, same run, same table).

    flock /tmp/ciliate-kernel.lock .venv/bin/python bench/bench_conntrack.py [-n 90000]
"""

from __future__ import annotations

import argparse
import ctypes
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redirect import bpfsys, conntrack, counters, layout  # noqa: E402
from redirect.datapath import Datapath  # noqa: E402
from tests.datapath.support import EGRESS, INGRESS, TCP, Ep, Server, endpoint, rule, state, syn_flood, tcp_connect  # noqa: E402
from tests.kernelnode import PodSpec, kernel_node  # noqa: E402

SILENT = IPv4Address("10.201.0.77")
PODS = [PodSpec("a", "10.201.0.2"), PodSpec("b", "10.201.0.3"), PodSpec("c", "10.201.0.9")]


def _median_ms(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=90_000, help="SYNs pod a sends")
    args = ap.parse_args()
    pin_dir = Path(f"/sys/fs/bpf/cbct-{secrets.token_hex(3)}")
    state_dir = Path(tempfile.mkdtemp(prefix="cbct-"))
    try:
        with kernel_node(PODS, prefix="cbc") as node:
            with node.iproute() as ipr:
                ipr.route("add", dst=f"{SILENT}/32", type="blackhole")
            dp = Datapath(pin_dir, state_dir, netns=node.netns)
            try:
                eps = {n: Ep(i + 11, i + 256, node.pods[n]) for i, n in enumerate("abc")}
                for e in eps.values():
                    dp.attach_endpoint(e.endpoint_id, e.pod.host_ifname, e.pod.ip, e.identity)
                a, b, c = eps["a"], eps["b"], eps["c"]
                dp.apply(state(1, [endpoint(a, [rule(2, EGRESS, TCP, 80)]), endpoint(b, [rule(c.identity, EGRESS, TCP, 8080)]),
                                   endpoint(c, [rule(b.identity, INGRESS, TCP, 8080)])]))
                t0 = time.perf_counter()
                sent, dport = 0, 80
                while sent < args.n:
                    sent += syn_flood(a.pod, SILENT, dport, range(1024, 1024 + min(64_512, args.n - sent)))
                    dport += 1
                flood_s = time.perf_counter() - t0
                ct = next(f for f in counters.map_fill(dp.maps) if f.name == "ciliate_ct")
                print(f"flood: {sent} SYNs in {flood_s:.2f} s ({sent / flood_s:,.0f}/s); "
                      f"ciliate_ct {ct.entries}/{ct.capacity} live ({100 * ct.entries / ct.capacity:.1f} %)")

                now = conntrack.clock_ns()
                flood = [e for e in conntrack.read(dp.maps) if SILENT in (e.saddr, e.daddr)]
                left = max(e.expires_ns - now for e in flood) / 1e9
                print(f"flood entries: {len(flood)}, longest left to live {left:.1f} s "
                      f"(SYN-only lifetime {layout.CT_LIFETIME_SYN_NS // 10**9} s; answered TCP {layout.CT_LIFETIME_TCP_NS // 10**9} s)")

                opened = 0
                with Server(c.pod, 8080) as srv:
                    for _ in range(20):
                        s = tcp_connect(b.pod, c.pod.ip, 8080, 2.0)
                        acc = srv.accept() if s is not None else None
                        opened += acc is not None
                        for x in (s, acc):
                            if x is not None:
                                x.close()
                print(f"b's new connections to c while full: {opened}/20")
                later = now + layout.CT_LIFETIME_SYN_NS + 10**9
                ct_later = next(f for f in counters.map_fill(dp.maps, later) if f.name == "ciliate_ct")
                print(f"fill once the SYN-only lifetime has passed: {ct_later.entries}/{ct_later.capacity}")

                fd = dp.maps.fds["ct"]
                keys_ms = _median_ms(lambda: bpfsys.keys(fd, ctypes.sizeof(layout.CtKey)))
                live_ms = _median_ms(lambda: conntrack.live_count(dp.maps))
                fill_ms = _median_ms(lambda: counters.map_fill(dp.maps))
                print(f"reading the fill of a full table: key walk (before) {keys_ms:.0f} ms, "
                      f"live count (batched) {live_ms:.0f} ms, whole map_fill {fill_ms:.0f} ms")
            finally:
                dp.teardown()
    finally:
        shutil.rmtree(pin_dir, ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
