"""TLS server names (serverNames) through the real agent: the kernel
redirects the pod's connection to Envoy, whose TLS inspector reads the
ClientHello's server name without terminating TLS; an admitted name reaches
the real server (the client verifies the server's own certificate), any
other, and a connection without one, is closed before the server ever
accepts it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.node import Lines, Node

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-only, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: tls}}]
    toPorts:
    - ports: [{port: "8443", protocol: TCP}]
      serverNames: [api.example.com, "*.example.org"]
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with Node(prefix="cilsni", subnet="10.203.0.0/24") as n:
        yield n


def _certificate(workdir: Path) -> tuple[Path, Path]:
    key, cert = workdir / "key.pem", workdir / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=api.example.com", "-addext",
         "subjectAltName=DNS:api.example.com,DNS:evil.example.com,DNS:www.example.org"],
        check=True, capture_output=True, timeout=60,
    )
    return key, cert


def connect(node: Node, name: str, cafile: Path) -> dict:
    out = subprocess.run(
        ["ip", "netns", "exec", node.pods["client"].netns, sys.executable, "-m", "tests.agent.tls_peer", "client",
         node.pods["tls"].ip, "8443", "--server-name", name, "--cafile", str(cafile), "--timeout", "5"],
        capture_output=True, text=True, timeout=60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_server_names_are_judged_by_envoy_on_a_redirected_connection(node: Node, tmp_path: Path) -> None:
    key, cert = _certificate(tmp_path)
    node.start_agent()
    node.add_pod("client", {"app": "client"})
    node.add_pod("tls", {"app": "tls"})
    proc = node.spawn("tls", [sys.executable, "-m", "tests.agent.tls_peer", "server", "--port", "8443",
                              "--cert", str(cert), "--key", str(key)])
    assert proc.stdout is not None and "listening" in proc.stdout.readline()
    server = Lines(proc)
    assert connect(node, "evil.example.com", cert)["result"] == "ok"  # no policy yet: everything goes

    f = tmp_path / "api-only.yaml"
    f.write_text(POLICY)
    node.apply_policy(f)
    got = connect(node, "api.example.com", cert)
    assert got == {"result": "ok", "echo": "ping"}, got
    assert connect(node, "www.example.org", cert)["result"] == "ok"
    accepted = sum(1 for ln in server.snapshot() if ln.get("event") == "accepted")
    for name in ("evil.example.com", "example.org"):
        got = connect(node, name, cert)
        assert got["result"] != "ok", (name, got)
    assert sum(1 for ln in server.snapshot() if ln.get("event") == "accepted") == accepted, \
        "the server accepted a connection whose server name the policy does not admit"
    names = [ln.get("server_name") for ln in server.snapshot() if ln.get("event") == "handshake"]
    assert names[-2:] == ["api.example.com", "www.example.org"], names
