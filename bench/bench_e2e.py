"""End-to-end benchmark through the real agent, eBPF datapath and Envoy:
how long from writing a policy file until it is enforced, and the agent's
memory per endpoint. A script, not a test; prints a table. Needs root.

Policy change -> enforcement, on a demo.node.Node (host netns running the real
agent, pods joined through ciliate-cni) with 1,000 unrelated policies loaded
(selecting labels no pod has) plus the star-wars policy, alternated between
two versions so that every change flips an outcome:
  - kernel (L3/L4): versions differ in who may open TCP/9000 on the deathstar
    (org=empire or org=alliance); measured until the first new connection of
    the newly denied ship is dropped (a prober in the pod opens a fresh
    connection every few ms and reports when the outcome changes);
  - L7: versions differ in the allowed HTTP call on port 80 (POST
    /v1/request-landing or PUT /v1/exhaust-port); measured until the first
    request of the newly denied call gets 403 (a prober on a keep-alive
    connection, a request every few ms).
Baseline, same run: the agent's own regeneration time for that change (its
`ciliate_endpoint_regeneration_time_stats_seconds` histogram, sum delta per change: compile,
Envoy ACK, kernel write). The difference is what lies outside the agent's
regeneration: noticing the file (the directory is polled) and the datapath
or Envoy taking effect.

Memory: RSS of the agent process (VmRSS) with the star-wars pods, then after
registering more endpoints through the agent's REST API (POST /v1/endpoints),
each on a real veth made in bulk in the host netns, so every endpoint gets
its real eBPF program and policy map, as a pod would.

Run: .venv/bin/python bench/bench_e2e.py [--changes 100] [--policies 1000] [--endpoints 100,1000]
(The `probe` and `sink` subcommands are what runs inside the pods.)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METRICS_PORT = 19962  # inside the node's own host netns
SINK_PORT = 9000
PROBE_EVERY = 0.003  # s between TCP probe attempts while the outcome is "open"
HTTP_PROBE_EVERY = 0.010  # s between HTTP probe requests (four of them share 2 cores with Envoy and the agent)
POLL = 0.2  # the agent's policy directory poll interval (AgentConfig.poll_interval)
CONNECT_TIMEOUT = 0.1  # s: a local SYN-ACK takes well under a millisecond

STARWARS = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: rule1}}
spec:
  endpointSelector: {{matchLabels: {{org: empire, class: deathstar}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{org: {l4_org}}}}}]
    toPorts: [{{ports: [{{port: "{sink}", protocol: TCP}}]}}]
  - fromEndpoints: [{{matchLabels: {{org: empire}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
      rules: {{http: [{{method: {method}, path: "{path}"}}]}}
"""
L7_ALLOWED = {"land": ("POST", "/v1/request-landing"), "exhaust": ("PUT", "/v1/exhaust-port")}


def unrelated(k: int) -> str:
    return f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: bench-{k}, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: nobody-{k % 100}}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: nobody-{(k + 1) % 100}}}}}]
    toPorts: [{{ports: [{{port: "{8000 + k % 1000}", protocol: TCP}}]}}]
"""


# -- inside the pods -----------------------------------------------------------------


def _probe_tcp(host: str, port: int) -> None:
    last = None
    while True:
        t = time.time()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST: no TIME_WAIT pile-up
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect((host, port))
            state = "open"
        except (socket.timeout, TimeoutError):
            state = "dropped"
        except OSError as exc:
            state = type(exc).__name__
        finally:
            s.close()
        if state != last:
            print(json.dumps({"t": t, "state": state}), flush=True)
            last = state
        if state == "open":
            time.sleep(PROBE_EVERY)


def _probe_http(host: str, port: int, method: str, path: str, keepalive: bool) -> None:
    import http.client

    last = None
    conn = None
    while True:
        t = time.time()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request(method, path, body=b"")
            resp = conn.getresponse()
            resp.read()
            state = str(resp.status)
            if resp.will_close or not keepalive:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            state = type(exc).__name__
            if conn is not None:
                conn.close()
            conn = None
        if state != last:
            print(json.dumps({"t": t, "state": state}), flush=True)
            last = state
        time.sleep(HTTP_PROBE_EVERY)


def _sink(port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1024)
    print(json.dumps({"listening": port}), flush=True)
    while True:
        c, _ = srv.accept()
        c.close()


# -- driving the node --------------------------------------------------------------------


def _in_netns(netns: str, fn):
    """Run fn in a thread that entered the named network namespace (sockets it makes live there)."""
    out: dict = {}

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/var/run/netns/{netns}") as f:
            if libc.setns(f.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                out["error"] = OSError(ctypes.get_errno(), "setns")
                return
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


REGEN_METRIC = "ciliate_endpoint_regeneration_time_stats_seconds"


def regen_seconds_sum(node) -> tuple[float, float]:
    def scrape() -> tuple[float, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read().decode()
        vals = {"_sum": 0.0, "_count": 0.0}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            base = name.split("{")[0]
            for suffix in vals:
                if base == REGEN_METRIC + suffix:
                    vals[suffix] += float(value)  # every scope
        return vals["_sum"], vals["_count"]

    return _in_netns(node.host_ns, scrape)


class Prober:
    """A probe process in a pod; `wait_for(state, after)` returns when it
    reported a change to `state` in an attempt started at or after `after`."""

    def __init__(self, node, pod: str, argv: list[str]) -> None:
        self.lines = node.watch(node.spawn(pod, [sys.executable, str(Path(__file__).resolve()), *argv]))

    def wait_for(self, state: str, after: float, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines.snapshot():
                if line.get("state") == state and line["t"] >= after:
                    return line["t"]
            time.sleep(0.002)
        raise TimeoutError(f"no {state!r} after {after}: last {self.lines.snapshot()[-3:]}")


def write_policy(node, text: str) -> float:
    tmp = node.policies / ".starwars.yaml.tmp"
    tmp.write_text(text)
    t = time.time()
    os.replace(tmp, node.policies / "starwars.yaml")
    return t


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def change_series(node, kind: str, changes: int, keepalive_probe: bool = True) -> tuple[list[float], list[float], list[float]]:
    """(end-to-end, agent regeneration, end-to-end on a keep-alive connection) seconds per change."""
    ds = node.pods["deathstar"].ip
    if kind == "kernel":
        probes = {
            "empire": Prober(node, "tiefighter", ["probe", "tcp", ds, str(SINK_PORT)]),
            "alliance": Prober(node, "xwing", ["probe", "tcp", ds, str(SINK_PORT)]),
        }
        version = lambda who: STARWARS.format(l4_org=who, sink=SINK_PORT, method="POST", path="/v1/request-landing")  # noqa: E731
        order, denied = ("alliance", "empire"), "dropped"
    else:
        probes = {
            name: Prober(node, "tiefighter", ["probe", "http", ds, "80", method, path]) for name, (method, path) in L7_ALLOWED.items()
        }
        # The same calls on one keep-alive connection each: how long an open
        # connection keeps the previous L7 policy.
        kept = {
            name: Prober(node, "tiefighter", ["probe", "http-keepalive", ds, "80", method, path]) for name, (method, path) in L7_ALLOWED.items()
        } if keepalive_probe else {}
        version = lambda who: STARWARS.format(l4_org="empire", sink=SINK_PORT, method=L7_ALLOWED[who][0], path=L7_ALLOWED[who][1])  # noqa: E731
        order, denied = ("exhaust", "land"), "403"
    allowed = "open" if kind == "kernel" else "200"
    if kind == "kernel":
        kept = {}
    # Start from the second version, then flip: change i allows order[i % 2].
    write_policy(node, version(order[1]))
    probes[order[0]].wait_for(denied, 0, timeout=30)
    time.sleep(0.5)
    e2e, regen, keepalive = [], [], []
    for i in range(changes):
        now, other = order[i % 2], order[(i + 1) % 2]
        # A random phase against the agent's safety-net directory poll (every 200 ms),
        # or a fixed loop period would always land at the same point of it.
        time.sleep(random.uniform(0, POLL))
        before = regen_seconds_sum(node)
        t0 = write_policy(node, version(now))
        e2e.append(probes[other].wait_for(denied, t0) - t0)
        probes[now].wait_for(allowed, t0)
        if kept:
            keepalive.append(kept[other].wait_for(denied, t0) - t0)
            kept[now].wait_for(allowed, t0)
        time.sleep(0.25)  # let the regeneration finish and the metrics settle
        after = regen_seconds_sum(node)
        regen.append(after[0] - before[0])  # every regeneration batch this change caused
    for p in [*probes.values(), *kept.values()]:
        p.lines.stop()
    return e2e, regen, keepalive


def make_veths(node, first: int, count: int) -> list[str]:
    names = [f"lxb{i:05d}" for i in range(first, first + count)]
    batch = "".join(f"link add {n} type veth peer name {n}p\nlink set {n} up\nlink set {n}p up\n" for n in names)
    subprocess.run(["ip", "-n", node.host_ns, "-batch", "-"], input=batch, text=True, check=True)
    return names


def add_endpoints(node, first: int, count: int) -> float:
    from agent.api.client import AgentClient
    from agent.core.models import EndpointCreate

    names = make_veths(node, first, count)
    t0 = time.perf_counter()
    with AgentClient(node.socket, timeout=600) as client:
        for i, name in zip(range(first, first + count), names):
            client.create_endpoint(EndpointCreate(
                container_id=f"bench-{i}", host_ifname=name, ipv4=f"10.209.{i // 250}.{i % 250 + 1}",
                labels={"app": f"bench-{i % 50}"}, name=f"default/bench-{i}",
            ))
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        eps = node.ciliate_json("endpoint", "list")["endpoints"]
        if all(e["state"] == "ready" for e in eps):
            return time.perf_counter() - t0
        time.sleep(0.5)
    raise TimeoutError("endpoints not ready")


def main() -> int:
    from demo.node import Node
    from demo.scenario import PODS

    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--endpoints", default="100,1000", help="memory checkpoints (total endpoints); empty: skip")
    ap.add_argument("--only", choices=("kernel", "l7"), help="run one latency series only")
    ap.add_argument("--no-keepalive-probe", action="store_true", help="L7: skip the keep-alive probers (less load)")
    a = ap.parse_args()
    checkpoints = sorted(int(x) for x in a.endpoints.split(",") if x)

    # SIGTERM unwinds like Ctrl-C, so the node's cleanup runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with Node(prefix="cilbench", subnet="10.207.0.0/24") as node:
        for k in range(a.policies):
            (node.policies / f"bench-{k:05d}.yaml").write_text(unrelated(k))
        write_policy(node, STARWARS.format(l4_org="empire", sink=SINK_PORT, method="POST", path="/v1/request-landing"))
        node.start_agent("--metrics-port", str(METRICS_PORT), timeout=120)
        for pod in PODS:
            node.add_pod(pod.name, pod.labels)
        # Drained: the server logs every request, and a full pipe would block
        # its threads mid-connection (Envoy's upstream then stalls for seconds).
        node.watch(node.serve_deathstar())
        sink = node.watch(node.spawn("deathstar", [sys.executable, str(Path(__file__).resolve()), "sink", str(SINK_PORT)]))
        time.sleep(0.3)
        assert sink.snapshot(), "the TCP sink did not start"
        n_pol = len(node.ciliate_json("policy", "get")["policies"])

        rows = []
        for kind, goal in (("kernel", 0.050), ("l7", 0.150)):
            if a.only in (None, kind):
                rows.append((kind, goal, *change_series(node, kind, a.changes, keepalive_probe=not a.no_keepalive_probe)))

        print(f"\npolicy change -> enforcement, end to end ({n_pol} policies in force, {a.changes} changes each, 3 pods)")
        print("  (L3/L4 probe: a new TCP connection every 3 ms; L7 probe: a request on a new connection every 10 ms;")
        print(f"   the agent is woken by inotify; its directory poll every {POLL * 1e3:.0f} ms is only the safety net)")
        print(f"  {'':44} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'goal p99':>9}")
        for kind, goal, e2e, regen, keepalive in rows:
            what = "kernel: file written -> next conn dropped" if kind == "kernel" else "L7: file written -> next request 403"
            print(f"  {what:44} {pct(e2e, .5) * 1e3:8.1f} {pct(e2e, .99) * 1e3:8.1f} {max(e2e) * 1e3:8.1f} {goal * 1e3:7.0f} {'ok' if pct(e2e, .99) < goal else 'MISSED'}  (min {min(e2e) * 1e3:.1f})")
            print(f"  {'  baseline: agent regeneration (metrics)':44} {pct(regen, .5) * 1e3:8.1f} {pct(regen, .99) * 1e3:8.1f} {max(regen) * 1e3:8.1f}")
            rest = [x - y for x, y in zip(e2e, regen)]
            print(f"  {'  rest: file noticed + taking effect':44} {pct(rest, .5) * 1e3:8.1f} {pct(rest, .99) * 1e3:8.1f} {max(rest) * 1e3:8.1f}")
            if keepalive:
                print(f"  {'  same, request on an open keep-alive conn':44} {pct(keepalive, .5) * 1e3:8.1f} {pct(keepalive, .99) * 1e3:8.1f} {max(keepalive) * 1e3:8.1f}")
        sys.stdout.flush()
        print("\nagent memory (VmRSS), endpoints on real veths with their eBPF programs", flush=True)
        base_n, base = len(node.pods), node.agent_rss()
        print(f"  {base_n:5d} endpoints: {base / 2**20:7.1f} MiB", flush=True)
        have = base_n
        for n in checkpoints:
            if n > have:
                took = add_endpoints(node, have, n - have)
                count, have = n - have, n
                time.sleep(1.0)
                r = node.agent_rss()
                print(f"  {n:5d} endpoints: {r / 2**20:7.1f} MiB  -> {(r - base) / (n - base_n) / 1024:7.1f} KiB per added endpoint"
                      f"  (registering {count} took {took:.1f} s, {took / count * 1e3:.0f} ms each)", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        kind, host, port, *rest = sys.argv[2:]
        _probe_tcp(host, int(port)) if kind == "tcp" else _probe_http(host, int(port), *rest, keepalive=kind == "http-keepalive")
    elif sys.argv[1:2] == ["sink"]:
        _sink(int(sys.argv[2]))
    else:
        sys.exit(main())
