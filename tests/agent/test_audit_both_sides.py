"""Audit mode relaxes only the audited endpoint's own rules: with L7 rules on
the sender's egress, the receiver's ingress, or both, and audit on the
sender, the receiver, or both, a request reaches the server exactly when
each side either admits it or is itself audited.

Real agent, kernel datapath, Envoy and pods (demo.node.Node). Pod c sends to
pod s on port 80. c's egress rule admits `GET /<any>/x`; s's ingress rule
admits `GET /public...`. Three requests tell the sides apart:
`/private/../x` (only c admits it), `/public/../y` (only s), `/public/../x`
(both), each with a segment of its own in the middle.
The server's log shows what reached it: a 403 must never have."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.node import Node
from tests.agent.test_l7_both_sides import INGRESS, _curl  # s admits only GET /public...

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
      rules: {http: [{method: GET, path: "/.*/x"}]}
"""

PATHS = ("/private/x", "/public/y", "/public/x")


def _c_admits(path: str) -> bool:
    return path.endswith("/x")


def _s_admits(path: str) -> bool:
    return path.startswith("/public")


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(prefix="cilaub", subnet="10.210.0.0/24") as n:
        yield n


def _audit(node: Node, pod: str, on: bool) -> None:
    ep = node.ciliate_json("endpoint", "config", str(node.pods[pod].endpoint_id), f"policy-audit-mode={str(on).lower()}")
    assert ep["audited"] is on, ep


@pytest.mark.privileged
@pytest.mark.envoy
def test_audit_on_one_side_never_lifts_the_other_sides_l7_rules(node: Node, tmp_path: Path) -> None:
    node.start_agent()
    node.add_pod("c", {"app": "c"})
    node.add_pod("s", {"app": "s"})
    seen = node.watch(node.serve_deathstar(pod="s"))
    egress, ingress = tmp_path / "c-egress.yaml", tmp_path / "s-ingress.yaml"
    egress.write_text(EGRESS)
    ingress.write_text(INGRESS)

    rows: list[str] = []
    wrong: list[str] = []
    denied: list[str] = []  # requests that got a 403: none may reach the server
    layouts = {"egress": (egress,), "ingress": (ingress,), "both": (egress, ingress)}
    audits = {"none": (), "sender": ("c",), "receiver": ("s",), "both": ("c", "s")}
    applied: set[Path] = set()
    for n, (layout, files) in enumerate(layouts.items()):
        for f in applied - set(files):
            node.remove_policy(f.name)
        for f in set(files) - applied:
            node.apply_policy(f)
        applied = set(files)
        for who, audited in audits.items():
            for pod in ("c", "s"):
                _audit(node, pod, pod in audited)
            for path, http2 in itertools.product(PATHS, (False, True)):
                c_ok = egress not in files or "c" in audited or _c_admits(path)
                s_ok = ingress not in files or "s" in audited or _s_admits(path)
                want = "404" if c_ok and s_ok else "403"  # the deathstar answers 404 on these paths
                # A distinct segment per request, so the server's log tells which reached it.
                top, _, leaf = path[1:].partition("/")
                tagged = f"/{top}/case-{n}-{who}-{int(http2)}/{leaf}"
                got = _curl(node, "GET", tagged, http2)
                line = f"L7 on {layout:7} audit {who:8} {'h2' if http2 else 'h1'} {path:11} want {want} got {got}"
                rows.append(line)
                if got != want:
                    wrong.append(line)
                if got == "403":
                    denied.append(tagged)
    assert not wrong, "\n".join(wrong) + "\n--- all:\n" + "\n".join(rows)
    reached = {e.get("path") for e in seen.stop()}
    assert len(reached - {None}) == len(rows) - len(denied), "every request answered 404 reached the server"
    leaked = [d for d in denied if d in reached]
    assert denied and not leaked, leaked
