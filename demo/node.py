"""A throw-away ciliate node: a "host" network namespace running the real
agent (with its eBPF datapath and supervised Envoy), and pods that join it
through the real `ciliate-cni` plugin with host-local IPAM.

Used by `ciliate demo`, the end-to-end and reliability tests and the
end-to-end benchmark. Does I/O throughout: namespaces, processes, bpffs.

`python -m demo.node traffic METHOD URL ...` is the traffic generator the
reliability tests run inside a pod (`Node.traffic`): a request per interval,
one JSON line per outcome, on a new connection each time or on one
keep-alive connection (to prove an established connection survives).
Everything it makes (namespaces, veths, pins, processes, files) is removed on
exit, also when the body raises.

Why a host namespace instead of the root one: the agent's ip rules, routes,
sysctls and tc programs stay inside it, so a demo or test never changes the
machine it runs on. The agent and the plugin are entered with nsenter, not
`ip netns exec`, because the latter remounts /sys and hides bpffs.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.unix_get import unix_get
from sidecar.leftover import envoys_using

NETNS_DIR = Path("/var/run/netns")
PY = sys.executable


class NodeError(RuntimeError):
    """A step of building or driving the node failed; the message says which."""


@dataclass
class Pod:
    name: str
    netns: str
    ip: str
    endpoint_id: int | None = None
    ip6: str | None = None  # when the node's IPAM has an IPv6 range
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None  # Kubernetes mode: the Pod object's namespace; its labels come from the API
    named_ports: list[dict] = field(default_factory=list)  # file/CNI mode: args.cni.namedPorts [{name, port, protocol}]


class Lines:
    """Drains a process's stdout in a thread so a chatty process (the
    deathstar logs every request) never blocks on a full pipe; keeps every
    line, JSON-decoded when it is JSON, stamped with `_at` (time read)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._lines: list[dict] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                item = json.loads(raw)
            except json.JSONDecodeError:
                item = {"raw": raw.rstrip("\n")}
            item = item if isinstance(item, dict) else {"raw": item}
            item["_at"] = time.time()  # when it was read: orders server logs against client outcomes
            with self._lock:
                self._lines.append(item)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self._lines)

    def __len__(self) -> int:
        with self._lock:
            return len(self._lines)

    def stop(self) -> list[dict]:
        """Kill the process and return every line it printed."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._thread.join(5)
        return self.snapshot()


def _run(*cmd: str, check: bool = False, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        raise NodeError(f"{' '.join(cmd)}: exit {out.returncode}: {(out.stderr or out.stdout).strip()}")
    return out


# Read-only queries the helpers poll in loops, answered by the agent's API in
# this process: as `ciliate ... -o json` prints them (the same model, dumped
# the same way), without an interpreter start per poll (~0.4 s of CPU each,
# which a test polling every 0.1 s took from the agent it was waiting for).
_API_READS = {("status",): "/v1/status", ("endpoint", "list"): "/v1/endpoints", ("identity", "list"): "/v1/identities",
              ("policy", "get"): "/v1/policies"}


class Node:
    """Context manager; see the module docstring."""

    def __init__(
        self, prefix: str = "cildemo", subnet: str = "10.203.0.0/24", workdir: Path | None = None,
        subnet6: str | None = "fd00:10:203::/64",
    ) -> None:
        """`subnet6`: the pods' IPv6 range (dual-stack pods); None for IPv4 only."""
        self.prefix = prefix
        self.subnet = subnet
        self.subnet6 = subnet6
        self.host_ns = f"{prefix}-host"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.state = self.workdir / "state"
        self.policies = self.workdir / "policies"
        self.pins = Path("/sys/fs/bpf") / f"{prefix}-{os.getpid()}"
        self.socket = self.state / "agent.sock"
        self.agent_log = self.workdir / "agent.log"
        self.agent: subprocess.Popen | None = None
        self.pods: dict[str, Pod] = {}
        self._procs: list[subprocess.Popen] = []

    # -- lifecycle

    def __enter__(self) -> "Node":
        if os.geteuid() != 0:
            raise NodeError("the node needs root: network namespaces, tc and bpf")
        try:
            self._netns_add(self.host_ns)
            _run("ip", "-n", self.host_ns, "link", "set", "lo", "up", check=True)
            if self.subnet6:  # the node routes between its pods' veths, as for IPv4
                _run("ip", "netns", "exec", self.host_ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", check=True)
            self.policies.mkdir(parents=True, exist_ok=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in [*self._procs, self.agent]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        # The agent's Envoy outlives a killed agent by design; find it by the
        # workdir in its command line, which is unique to this node.
        for pid in _run("pgrep", "-f", str(self.workdir)).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        for pod in list(self.pods.values()):
            _run("ip", "netns", "del", pod.netns)
        _run("ip", "netns", "del", self.host_ns)
        shutil.rmtree(self.pins, ignore_errors=True)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _netns_add(self, name: str) -> None:
        _run("ip", "netns", "del", name)  # a leftover of a killed run
        _run("ip", "netns", "add", name, check=True)

    # -- the agent

    def start_agent(self, *extra: str, timeout: float = 60.0, healthy: bool = True) -> subprocess.Popen:
        """Start the agent and wait until it answers `ciliate status`: healthy,
        or with `healthy=False` merely up (e.g. started while etcd is down)."""
        log = open(self.agent_log, "ab")
        self.agent = subprocess.Popen(
            [
                "nsenter", f"--net={NETNS_DIR / self.host_ns}", PY, "-m", "agent.cli", "agent",
                "--state-dir", str(self.state), "--policy-dir", str(self.policies), "--bpf-dir", str(self.pins),
                "--metrics-port", "-1", "--ack-timeout", "10", *extra,
            ],
            stdout=log, stderr=log,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise NodeError(f"agent exited with {self.agent.returncode}:\n{self.agent_tail()}")
            if self.socket.exists():
                try:
                    got = self.api_get("/v1/status")
                except (OSError, http.client.HTTPException, ValueError):
                    got = None  # not answering yet
                if got is not None and (got.get("ok") or not healthy):
                    return self.agent
            time.sleep(0.2)
        raise NodeError(f"agent not healthy after {timeout:.0f}s:\n{self.agent_tail()}")

    def agent_tail(self, n: int = 3000) -> str:
        try:
            return self.agent_log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no agent log)"

    def kill_agent(self) -> None:
        """SIGKILL the agent, as a crash would: no shutdown code runs."""
        if self.agent is None or self.agent.poll() is not None:
            raise NodeError("the agent is not running")
        self.agent.send_signal(signal.SIGKILL)
        self.agent.wait(10)

    def envoy_pid(self) -> int | None:
        """The pid of the Envoy the agent supervises, from `ciliate status`."""
        return self.status()["proxy"].get("envoy_pid") or None

    def envoy_pids(self) -> list[int]:
        """Every Envoy process of this node (the supervised one, and one a
        killed agent left behind until the next agent retires it)."""
        return envoys_using(self.state / "envoy" / "bootstrap.json")

    def status(self) -> dict:
        """What `ciliate status -o json` prints, also while degraded."""
        return self.ciliate_json("status")

    def api_get(self, path: str, timeout: float = 30.0) -> dict:
        """GET a read-only path of the agent's API; the decoded JSON body.
        Raises OSError when nothing answers, NodeError on an error reply."""
        status, body = unix_get(str(self.socket), path, timeout, host="ciliate-agent")
        if status != 200:
            raise NodeError(f"GET {path}: HTTP {status}: {body[:500]!r}")
        return json.loads(body)

    def agent_rss(self) -> int:
        """Resident memory of the agent process in bytes (VmRSS in /proc)."""
        if self.agent is None or self.agent.poll() is not None:
            raise NodeError("the agent is not running")
        for line in Path(f"/proc/{self.agent.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise NodeError(f"no VmRSS in /proc/{self.agent.pid}/status")

    def ciliate(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return _run(PY, "-m", "agent.cli", *args, "--socket", str(self.socket), timeout=timeout)

    def ciliate_json(self, *args: str) -> dict:
        path = _API_READS.get(args)
        if path is not None:
            try:
                return self.api_get(path)
            except OSError as exc:
                raise NodeError(f"ciliate {' '.join(args)}: the agent does not answer at {self.socket}: {exc}") from None
        out = self.ciliate(*args, "-o", "json")
        if out.returncode != 0:
            raise NodeError(f"ciliate {' '.join(args)}: {(out.stderr or out.stdout).strip()}")
        return json.loads(out.stdout)

    # -- pods

    def add_pod(self, name: str, labels: dict[str, str], namespace: str | None = None,
                named_ports: list[dict] | None = None) -> Pod:
        """Join a pod. With `namespace` (Kubernetes mode) the plugin passes
        K8S_POD_NAMESPACE/K8S_POD_NAME and the agent takes the labels from the
        Pod object, which must exist in the API server; `labels` is then only
        what the caller expects to see."""
        netns = f"{self.prefix}-{name}"[:15]
        self._netns_add(netns)
        pod = Pod(name, netns, "", labels=dict(labels), namespace=namespace, named_ports=list(named_ports or []))
        self.pods[name] = pod
        result = self.cni("ADD", pod)
        addrs = [ip["address"].split("/")[0] for ip in result["ips"]]
        pod.ip = next(a for a in addrs if ":" not in a)
        pod.ip6 = next((a for a in addrs if ":" in a), None)
        for ep in self.ciliate_json("endpoint", "list")["endpoints"]:
            if ep.get("ipv4") == pod.ip:
                pod.endpoint_id = ep["id"]
        return pod

    def add_host(self, name: str, address: str, gateway: str, prefixlen: int = 30) -> Pod:
        """A host outside the cluster, routed by the node: a network namespace
        on its own veth link (address/prefixlen, the node's side `gateway`),
        with no endpoint and no program: the agent knows it only by address
        (a CIDR peer, or world). Spawn, serve and request as with a pod; it
        goes on close like one (its veth with its namespace)."""
        netns = f"{self.prefix}-{name}"[:15]
        host_if = f"x-{name}"[:15]
        self._netns_add(netns)
        pod = Pod(name, netns, address)
        self.pods[name] = pod
        for cmd in (
            ("ip", "-n", self.host_ns, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns),
            ("ip", "-n", self.host_ns, "addr", "add", f"{gateway}/{prefixlen}", "dev", host_if),
            ("ip", "-n", self.host_ns, "link", "set", host_if, "up"),
            ("ip", "netns", "exec", self.host_ns, "sysctl", "-qw", f"net.ipv4.conf.{host_if}.forwarding=1"),
            ("ip", "-n", netns, "link", "set", "lo", "up"),
            ("ip", "-n", netns, "addr", "add", f"{address}/{prefixlen}", "dev", "eth0"),
            ("ip", "-n", netns, "link", "set", "eth0", "up"),
            ("ip", "-n", netns, "route", "add", "default", "via", gateway),
        ):
            _run(*cmd, check=True)
        return pod

    def cni(self, command: str, pod: Pod) -> dict:
        conf, env = cni_request(command, pod, prefix=self.prefix, socket=self.socket, ipam_dir=self.workdir / "ipam",
                                subnet=self.subnet, subnet6=self.subnet6)
        out = _run("nsenter", f"--net={NETNS_DIR / self.host_ns}", PY, "-m", "agent.cni", input=json.dumps(conf), env=env)
        if out.returncode != 0:
            raise NodeError(f"ciliate-cni {command} {pod.name}: {out.stdout.strip()} {out.stderr.strip()}")
        return json.loads(out.stdout) if out.stdout.strip() else {}

    def watch(self, proc: subprocess.Popen) -> Lines:
        """Collect a spawned process's output lines from now on (see Lines)."""
        return Lines(proc)

    def traffic(
        self, pod: str, method: str, dst: str, path: str, *,
        interval: float = 0.05, timeout: float = 1.0, keepalive: bool = False,
    ) -> Lines:
        """Continuous requests from a pod until stopped; one outcome per line:
        {"t", "seq", "conn", "status"} or {"t", "seq", "conn", "error"}. With
        keepalive, every request reuses one connection (`conn` counts the
        connections the generator had to open)."""
        argv = [
            PY, "-m", "demo.node", "traffic", method, f"http://{dst}{path}",
            "--interval", str(interval), "--timeout", str(timeout), *(["--keepalive"] if keepalive else []),
        ]
        lines = Lines(self.spawn(pod, argv))
        deadline = time.monotonic() + 10
        while not lines.snapshot() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not lines.snapshot() or "started" not in lines.snapshot()[0]:
            raise NodeError(f"traffic generator in {pod} did not start: {lines.snapshot()[:1]}")
        return lines

    def spawn(self, pod: str, argv: list[str]) -> subprocess.Popen:
        """A long-running process inside a pod; killed on close."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.pods[pod].netns, *argv],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._procs.append(proc)
        return proc

    def serve_deathstar(self, pod: str = "deathstar", port: int = 80) -> subprocess.Popen:
        proc = self.spawn(pod, [PY, "-m", "demo.apps", "server", "--port", str(port)])
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening" not in line:
            raise NodeError(f"deathstar server did not start in {pod}: {line!r}")
        return proc

    def request(self, pod: str, method: str, dst: str, path: str, timeout: float = 2.0) -> dict:
        """One HTTP request from a pod: {"status": N, "body": ...} or {"error": ...}."""
        out = _run(
            "ip", "netns", "exec", self.pods[pod].netns, PY, "-m", "demo.apps", "request",
            method, f"http://{dst}{path}", "--timeout", str(timeout),
        )
        try:
            return json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {"error": "client-failed", "detail": out.stderr.strip()[-300:]}

    # -- policies

    def policy_revision(self) -> int:
        return int(self.ciliate_json("policy", "get")["revision"])

    def apply_policy(self, source: Path, name: str | None = None, timeout: float = 30.0) -> int:
        """Write a policy file into the watched directory atomically and wait
        until the agent reports it enforced at a newer revision."""
        before = self.policy_revision()
        target = self.policies / (name or source.name)
        tmp = self.policies / f".{target.name}.tmp"
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        return self.wait_policy(target.name, after=before, timeout=timeout)

    def remove_policy(self, name: str, timeout: float = 30.0) -> None:
        before = self.policy_revision()
        (self.policies / name).unlink()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pols = self.ciliate_json("policy", "get")
            if pols["revision"] > before and not any(p["source"].endswith("/" + name) for p in pols["policies"]):
                return
            time.sleep(0.05)
        raise NodeError(f"{name} still in force after {timeout:.0f}s")

    def wait_policy(self, file_name: str, after: int = -1, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        last: list = []
        while time.monotonic() < deadline:
            pols = self.ciliate_json("policy", "get")
            last = [p for p in pols["policies"] if p["source"].endswith("/" + file_name)]
            if last and all(p["state"] == "enforced" and p["revision"] > after for p in last):
                return int(pols["revision"])
            if any(p["state"] == "error" for p in last):
                raise NodeError(f"{file_name} was rejected: {last}")
            time.sleep(0.05)
        raise NodeError(f"{file_name} not enforced after {timeout:.0f}s: {last}")


def cni_request(
    command: str, pod: Pod, *, prefix: str, socket: Path, ipam_dir: Path, subnet: str, subnet6: str | None = None,
) -> tuple[dict, dict[str, str]]:
    """The network configuration and environment a runtime hands ciliate-cni
    for `pod`: the CNI_ARGS kubelet sets, plus labels in args.cni.labels
    unless it is a Kubernetes pod (the agent then reads them from the Pod)."""
    conf: dict = {
        "cniVersion": "1.0.0", "name": prefix, "type": "ciliate-cni", "agentSocket": str(socket),
        "ipam": {"type": "host-local", "dataDir": str(ipam_dir), "ranges": [[{"subnet": subnet}]]},
    }
    if subnet6:
        conf["ipam"]["ranges"].append([{"subnet": subnet6}])
    env = {
        **os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": f"{prefix}-{pod.name}",
        "CNI_NETNS": str(NETNS_DIR / pod.netns), "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
    }
    # kubelet names the pod in CNI_ARGS; the endpoint's display name (ns/pod)
    # comes from there, and `ciliate monitor` shows it.
    env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace or 'default'};K8S_POD_NAME={pod.name}"
    if pod.namespace is None:
        conf["args"] = {"cni": {"labels": [{"key": k, "value": v} for k, v in pod.labels.items()]}}
        if pod.named_ports:
            conf["args"]["cni"]["namedPorts"] = pod.named_ports
    return conf, env


# -- the traffic generator (runs inside a pod: standard library only)


def _generate(method: str, url: str, interval: float, timeout: float, keepalive: bool) -> Iterator[dict]:
    import http.client
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn: http.client.HTTPConnection | None = None
    opened = 0
    seq = 0
    while True:
        seq += 1
        t = time.time()
        if conn is None:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
            opened += 1
        try:
            conn.request(method, parts.path or "/", body=b"" if method in ("POST", "PUT") else None)
            resp = conn.getresponse()
            resp.read()
            out: dict = {"status": resp.status}
            if resp.will_close:
                conn.close()
                conn = None
        except (socket.timeout, TimeoutError):
            out = {"error": "timeout"}
            conn.close()
            conn = None
        except (OSError, http.client.HTTPException) as exc:
            out = {"error": type(exc).__name__}
            conn.close()
            conn = None
        if not keepalive and conn is not None:
            conn.close()
            conn = None
        yield {"t": t, "seq": seq, "conn": opened, **out}
        time.sleep(max(0.0, interval - (time.time() - t)))


def _traffic_main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m demo.node traffic")
    ap.add_argument("method")
    ap.add_argument("url")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--keepalive", action="store_true")
    a = ap.parse_args(argv)
    print(json.dumps({"started": a.url}), flush=True)
    for outcome in _generate(a.method.upper(), a.url, a.interval, a.timeout, a.keepalive):
        print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["traffic"]:
        print("usage: python -m demo.node traffic METHOD URL [--interval S] [--timeout S] [--keepalive]", file=sys.stderr)
        sys.exit(2)
    sys.exit(_traffic_main(sys.argv[2:]))
