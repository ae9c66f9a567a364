"""Shared pieces of the reliability tests: a star-wars node with the agent,
Envoy, three pods joined through ciliate-cni and deathstar servers whose
request logs are collected, plus small helpers that turn a traffic
generator's lines into the counts a person would look at.

Everything a test makes lives in namespaces, pins and processes owned by
demo.node.Node, which removes them even when the test fails."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.node import Lines, Node
from demo.scenario import PODS

ROOT = Path(__file__).resolve().parents[2]
STARWARS = ROOT / "examples" / "starwars"
POLICIES = Path(__file__).resolve().parent / "policies"
LAND = ("POST", "/v1/request-landing")
EXHAUST = ("PUT", "/v1/exhaust-port")
L7_PORT = 80  # under the L7 policies, through Envoy
L4_PORT = 8080  # allowed at L3/L4 only by policies/mixed.yaml


@dataclass
class Starwars:
    node: Node
    servers: dict[int, Lines]  # port -> the deathstar's request log

    def dst(self, port: int = L7_PORT) -> str:
        return f"{self.node.pods['deathstar'].ip}:{port}"

    def ip(self, pod: str) -> str:
        return self.node.pods[pod].ip

    def hits(self, port: int, pod: str, method: str | None = None, path: str | None = None) -> list[dict]:
        """Requests from `pod` that reached the server at all."""
        return [
            line for line in self.servers[port].snapshot()
            if line.get("client") == self.ip(pod)
            and (method is None or line.get("method") == method)
            and (path is None or line.get("path") == path)
        ]

    def endpoints(self) -> dict[str, tuple[int, int | None, str]]:
        """pod name -> (endpoint id, identity, state), as `ciliate endpoint list` shows it."""
        by_ip = {p.ip: name for name, p in self.node.pods.items()}
        return {
            by_ip.get(str(e.get("ipv4")), str(e["id"])): (e["id"], e.get("identity"), e["state"])
            for e in self.node.ciliate_json("endpoint", "list")["endpoints"]
        }


def build_starwars(node: Node, policy: Path | None, ports: tuple[int, ...] = (L7_PORT,)) -> Starwars:
    node.start_agent()
    for pod in PODS:
        node.add_pod(pod.name, pod.labels)
    servers = {port: node.watch(node.serve_deathstar(port=port)) for port in ports}
    if policy is not None:
        node.apply_policy(policy, name="starwars.yaml")
    return Starwars(node, servers)


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(prefix="cilrel", subnet="10.204.0.0/24") as n:
        yield n


# -- reading a traffic generator's lines


def outcomes(lines: Lines | list[dict], since: float = 0.0, until: float = float("inf")) -> list[dict]:
    """The generator's request outcomes (not its start line) issued in [since, until)."""
    got = lines.snapshot() if isinstance(lines, Lines) else lines
    return [o for o in got if "seq" in o and since <= o["t"] < until]


def label(o: dict) -> str:
    return str(o["status"]) if "status" in o else o["error"]


def tally(outs: list[dict]) -> dict[str, int]:
    return dict(Counter(label(o) for o in outs))


def wait_for(what: str, check: Callable[[], object], timeout: float = 60.0, every: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def sample(what: str, flows: Iterable[Lines], n: int = 5, timeout: float = 60.0) -> None:
    """Let every traffic generator finish n more requests than it has now: a
    window of traffic measured in requests, not seconds, so a loaded machine
    gets the same sample as an idle one (a sleep would give it fewer)."""
    flows = list(flows)
    start = [len(outcomes(f)) for f in flows]
    wait_for(f"{n} more requests of every flow {what}",
             lambda: all(len(outcomes(f)) >= s + n for f, s in zip(flows, start)), timeout=timeout)
