"""`ciliate agent` for real: kernel datapath, supervised Envoy, pods joined through
ciliate-cni, the star-wars policies from a watched directory, and SIGTERM leaving the
kernel enforcing. Everything runs in network namespaces made here; the agent's
"host" is one of them (entered with nsenter, which keeps bpffs visible)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "starwars"
HOST = "cilagt-e2e-host"
PODS = {
    "deathstar": [{"key": "org", "value": "empire"}, {"key": "class", "value": "deathstar"}],
    "tiefighter": [{"key": "org", "value": "empire"}, {"key": "class", "value": "tiefighter"}],
    "xwing": [{"key": "org", "value": "alliance"}, {"key": "class", "value": "xwing"}],
}
SERVER = """
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self): self._r(b"Ship landed\\n")
    def do_PUT(self): self._r(b"Panic: deathstar exploded\\n")
    def _r(self, body):
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
HTTPServer(("0.0.0.0", 80), H).serve_forever()
"""


def ns(name: str) -> str:
    return f"cilagt-e2e-{name[:2]}" if name != "host" else HOST


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.policies = tmp / "policies"
        self.pins = Path("/sys/fs/bpf") / f"cilagt-e2e-{os.getpid()}"
        self.sock = self.state / "agent.sock"
        self.agent: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        self.ds_ip = ""

    def ciliate(self, *args: str) -> subprocess.CompletedProcess:
        return sh(sys.executable, "-m", "agent.cli", *args, "--socket", str(self.sock), cwd=ROOT)

    def start_agent(self) -> None:
        log = open(self.tmp / "agent.log", "ab")
        self.agent = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{HOST}", sys.executable, "-m", "agent.cli", "agent",
             "--state-dir", str(self.state), "--policy-dir", str(self.policies), "--bpf-dir", str(self.pins),
             "--metrics-port", "-1", "--ack-timeout", "10"],
            cwd=ROOT, stdout=log, stderr=log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise AssertionError(f"agent exited: {(self.tmp / 'agent.log').read_text()[-3000:]}")
            if self.sock.exists() and self.ciliate("status").returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"agent not healthy in 60s: {(self.tmp / 'agent.log').read_text()[-3000:]}")

    def cni(self, command: str, pod: str) -> dict | None:
        conf = {
            "cniVersion": "1.0.0", "name": "e2e", "type": "ciliate-cni", "agentSocket": str(self.sock),
            "ipam": {"type": "host-local", "dataDir": str(self.tmp / "ipam"), "ranges": [[{"subnet": "10.202.0.0/24"}]]},
            "args": {"cni": {"labels": PODS[pod]}},
        }
        env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": f"e2e-{pod}", "CNI_NETNS": f"/var/run/netns/{ns(pod)}",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        out = sh("nsenter", f"--net=/var/run/netns/{HOST}", sys.executable, "-m", "agent.cni", input=json.dumps(conf), env=env, cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    def request(self, pod: str, method: str, path: str) -> str:
        out = sh("ip", "netns", "exec", ns(pod), "curl", "-s", "-m", "2", "-X", method, f"http://{self.ds_ip}{path}", "-o", "/dev/null", "-w", "%{http_code}")
        return "dropped" if out.stdout in ("", "000") else out.stdout

    def policy_in_force(self, source: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.ciliate("policy", "get", "-o", "json")
            if out.returncode == 0:
                pols = json.loads(out.stdout)["policies"]
                if any(p["source"].endswith(source) and p["state"] == "enforced" for p in pols):
                    return
            time.sleep(0.1)
        raise AssertionError(f"{source} not enforced: {self.ciliate('policy', 'get').stdout}")


@pytest.fixture
def world() -> Iterator[World]:
    tmp = Path(tempfile.mkdtemp(prefix="cil-e2e-"))
    w = World(tmp)
    try:
        for name in ("host", *PODS):
            sh("ip", "netns", "del", ns(name))
            subprocess.run(["ip", "netns", "add", ns(name)], check=True)
        subprocess.run(["ip", "-n", HOST, "link", "set", "lo", "up"], check=True)
        w.policies.mkdir()
        yield w
    finally:
        for proc in (w.server, w.agent):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in sh("pgrep", "-f", str(tmp)).stdout.split():  # the agent's Envoy, by its workdir
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        for name in (*PODS, "host"):
            sh("ip", "netns", "del", ns(name))
        shutil.rmtree(w.pins, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.privileged
@pytest.mark.envoy
def test_starwars_through_the_real_agent(world: World) -> None:
    world.start_agent()
    for pod in PODS:
        result = world.cni("ADD", pod)
        assert result is not None and result["ips"]
        if pod == "deathstar":
            world.ds_ip = result["ips"][0]["address"].split("/")[0]
    eps = json.loads(world.ciliate("endpoint", "list", "-o", "json").stdout)["endpoints"]
    assert [e["state"] for e in eps] == ["ready"] * 3
    world.server = subprocess.Popen(["ip", "netns", "exec", ns("deathstar"), sys.executable, "-c", SERVER])
    time.sleep(0.5)

    observed: list[tuple[str, str, str, str]] = []

    def check(stage: str, pod: str, method: str, path: str, expected: str) -> None:
        observed.append((stage, f"{pod} {method} {path}", expected, world.request(pod, method, path)))

    check("no policy", "tiefighter", "POST", "/v1/request-landing", "200")
    check("no policy", "xwing", "POST", "/v1/request-landing", "200")
    shutil.copy(EXAMPLES / "1-l3l4.yaml", world.policies)
    world.policy_in_force("1-l3l4.yaml")
    check("L3/L4", "tiefighter", "POST", "/v1/request-landing", "200")
    check("L3/L4", "xwing", "POST", "/v1/request-landing", "dropped")
    shutil.copy(EXAMPLES / "2-l7.yaml", world.policies)
    world.policy_in_force("2-l7.yaml")
    check("L7", "tiefighter", "PUT", "/v1/exhaust-port", "403")
    check("L7", "xwing", "POST", "/v1/request-landing", "dropped")
    check("L7", "tiefighter", "POST", "/v1/request-landing", "200")
    dump = json.loads(world.ciliate("bpf", "policy", "get", str(eps[0]["id"]), "-o", "json").stdout)
    assert {e["verdict"] for e in dump["entries"]} == {"redirect"}

    # SIGTERM: the agent goes, the kernel keeps enforcing.
    assert world.agent is not None
    world.agent.send_signal(signal.SIGTERM)
    assert world.agent.wait(30) == 0
    check("agent stopped", "xwing", "POST", "/v1/request-landing", "dropped")

    table = "\n".join(f"{s:14} {r:40} expected {e:8} observed {o}" for s, r, e, o in observed)
    wrong = [row for row in observed if row[2] != row[3]]
    assert not wrong, table
