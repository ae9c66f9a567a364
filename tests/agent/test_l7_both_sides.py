"""Where two L7 rule sets meet, both hold; path tricks do not walk past them.

Real agent, kernel datapath, Envoy and pods (demo.node.Node). Pod c sends to
pod s on port 80. c's egress policy allows `GET` on any path to s; s's
ingress policy allows from c only `GET /public/...`. With both in force the
kernel hands the flow to c's egress proxy only, which must also apply s's
ingress rules (Cilium's semantics: a request passes only if both admit it).

Path tricks (`--path-as-is`, over HTTP/1.1 and HTTP/2) must not reach the
server under a rule they should not pass, and `ciliate policy trace` must
agree with what the datapath did for every request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.node import Node

ROOT = Path(__file__).resolve().parents[2]

EGRESS = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c-egress}
spec:
  endpointSelector: {matchLabels: {app: c}}
  egress:
  - toEndpoints: [{matchLabels: {app: s}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET}]}
"""
INGRESS = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: s-ingress}
spec:
  endpointSelector: {matchLabels: {app: s}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: "/public(/.*)?"}]}
"""

DENY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: s-deny}
spec:
  endpointSelector: {matchLabels: {app: s}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: c}}]
"""

# Requests whose normalized path leaves /public: denied by s's ingress rule.
TRICKS = (
    "/public/../private",
    "/public/%2e%2e/private",
    "/public/..%2fprivate",
    "/public/./../private",
    "/public/%2E%2E/private",
    "/public/..\\private",
)


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(prefix="cil7b", subnet="10.208.0.0/24") as n:
        yield n


def _curl(node: Node, method: str, path: str, http2: bool) -> str:
    """What a person sees from curl: the status code, or `dropped`."""
    url = f"http://{node.pods['s'].ip}:80{path}"
    argv = ["ip", "netns", "exec", node.pods["c"].netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
            "--path-as-is", "--max-time", "3", "-X", method]
    if http2:
        argv.append("--http2-prior-knowledge")
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=20)
    code = out.stdout.strip()
    return "dropped" if code in ("", "000") else code


def _trace(node: Node, files: list[Path], method: str, path: str) -> str:
    argv = [sys.executable, "-m", "agent.cli", "policy", "trace"]
    for f in files:
        argv += ["--policies", str(f)]
    argv += ["--src", "labels:app=c", "--dst", "labels:app=s", "--dport", "80/TCP", "--method", method, "--path", path, "-o", "json"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout)["verdict"]


@pytest.mark.privileged
@pytest.mark.envoy
def test_egress_and_ingress_http_rules_both_hold_and_paths_are_normalized(node: Node, tmp_path: Path) -> None:
    node.start_agent()
    node.add_pod("c", {"app": "c"})
    node.add_pod("s", {"app": "s"})
    server = node.serve_deathstar(pod="s")
    seen = node.watch(server)
    egress, ingress = tmp_path / "c-egress.yaml", tmp_path / "s-ingress.yaml"
    egress.write_text(EGRESS)
    ingress.write_text(INGRESS)

    # (stage, method, path, http2) -> observed; the server's 404 means "reached it".
    rows: list[tuple[str, str, str, str, str, str]] = []

    def check(stage: str, files: list[Path], method: str, path: str, want: str, http2: bool = False) -> None:
        got = _curl(node, method, path, http2)
        traced = _trace(node, files, method, path) if files else "allowed"
        rows.append((stage, f"{method} {path}{' (h2)' if http2 else ''}", want, got, traced))

    check("no policy", [], "GET", "/private", "404")

    node.apply_policy(ingress)
    stage = "ingress only"
    check(stage, [ingress], "GET", "/public/x", "404")
    check(stage, [ingress], "GET", "/private", "403")
    for trick in TRICKS:
        want = "400" if "%2f" in trick.lower() else "403"
        check(stage, [ingress], "GET", trick, want)
        check(stage, [ingress], "GET", trick, want, http2=True)
    # Normalized inside /public: allowed, and the server gets the normalized path.
    check(stage, [ingress], "GET", "/public//../x", "404")

    node.apply_policy(egress)
    stage = "both"
    check(stage, [ingress, egress], "GET", "/public/x", "404")
    check(stage, [ingress, egress], "GET", "/private", "403")  # the bypass: was 200
    check(stage, [ingress, egress], "PUT", "/public/x", "403")  # c's egress allows GET only
    for trick in TRICKS:
        want = "400" if "%2f" in trick.lower() else "403"
        check(stage, [ingress, egress], "GET", trick, want)
        check(stage, [ingress, egress], "GET", trick, want, http2=True)

    # Straight to a proxy port, bypassing the redirect (from a pod through the
    # node's address, and from the node itself): no filter chain matches, so
    # the connection gets no HTTP answer and nothing reaches the server.
    c_id = node.pods["c"].endpoint_id
    proxy_ports = {e["proxy_port"] for e in node.ciliate_json("bpf", "policy", "get", str(c_id))["entries"] if e["proxy_port"]}
    assert proxy_ports, "c's egress redirect has a proxy port"
    gateway = subprocess.run(["ip", "-n", node.pods["s"].netns, "route", "show", "default"], capture_output=True, text=True).stdout.split()[2]
    for port in proxy_ports:
        for netns, addr in ((node.pods["s"].netns, gateway), (node.host_ns, "127.0.0.1")):
            out = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                  "--max-time", "3", f"http://{addr}:{port}/public/x"], capture_output=True, text=True, timeout=20)
            rows.append(("direct", f"GET {addr}:{port}/public/x", "000", out.stdout.strip() or "000", "denied"))

    # L3/L4 meets L7: the receiver's ingress deny drops the flow in the kernel
    # even though the sender's egress proxy would have let the request through.
    deny = tmp_path / "s-deny.yaml"
    deny.write_text(DENY)
    node.apply_policy(deny)
    check("deny + both", [ingress, egress, deny], "GET", "/public/x", "dropped")
    node.remove_policy(deny.name)

    node.remove_policy(ingress.name)
    stage = "egress only"
    check(stage, [egress], "GET", "/private", "404")
    check(stage, [egress], "PUT", "/public/x", "403")
    check(stage, [egress], "GET", "/a/../private", "404")  # normalized on the egress hop too

    table = "\n".join(f"{s:13} {r:36} want {w:8} got {g:8} trace {t}" for s, r, w, g, t in rows)
    assert all(w == g for _, _, w, g, _ in rows), table
    # trace agrees with the datapath on every request: allowed iff it reached the server.
    assert all((t == "allowed") == (g == "404") for s, _, _, g, t in rows if s != "direct"), table
    assert [r for r in rows if r[3] == "dropped"] == [r for r in rows if r[0] == "deny + both"], table

    paths = [e["path"] for e in seen.stop() if "path" in e]
    # Only normalized paths reach the server, never one outside /public while s's rule holds.
    assert not [p for p in paths if ".." in p or "%2" in p.lower() or "\\" in p or "//" in p], paths
    assert paths.count("/private") == 3, paths  # no policy, and egress only (twice)
    assert "/public/x" in paths and "/private" in paths
