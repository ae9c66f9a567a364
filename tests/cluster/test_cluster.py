"""Two nodes, one real etcd: the deathstar on node 1, the tiefighter and the
xwing on node 2, every request crossing the underlay between the nodes'
network namespaces. Each node runs its own agent, eBPF datapath and Envoy
(demo/cluster.py). The tests run in file order on one cluster; the last
ones break it on purpose (agent restart, etcd restart, node loss).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.cluster import ETCD_URL, Cluster
from demo.node import Lines
from demo.scenario import PODS
from tests.reliability.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
STARWARS = ROOT / "examples" / "starwars"
POLICIES = Path(__file__).resolve().parent / "policies"
LAND = ("POST", "/v1/request-landing")
EXHAUST = ("PUT", "/v1/exhaust-port")
# Long enough that a loaded machine (an agent busy compiling its datapath)
# never lets a live node's lease lapse; only the dead-node test waits it out.
LEASE_TTL = 15.0

pytestmark = [pytest.mark.privileged, pytest.mark.envoy, pytest.mark.etcd]


class World:
    def __init__(self, cluster: Cluster, server: Lines) -> None:
        self.cluster = cluster
        self.server = server
        self.home, self.away = cluster.nodes

    @property
    def deathstar(self) -> str:
        return f"{self.home.pods['deathstar'].ip}:80"

    def request(self, ship: str, method: str, path: str, timeout: float = 2.0) -> dict:
        return self.away.request(ship, method, self.deathstar, path, timeout=timeout)

    def hits(self, ship: str, method: str | None = None) -> list[dict]:
        ip = self.away.pods[ship].ip
        return [ln for ln in self.server.snapshot() if ln.get("client") == ip and (method is None or ln.get("method") == method)]

    def apply_everywhere(self, source: Path, name: str) -> None:
        for node in self.cluster.nodes:
            node.apply_policy(source, name=name)

    def remove_everywhere(self, name: str) -> None:
        for node in self.cluster.nodes:
            if (node.policies / name).exists():
                node.remove_policy(name)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with Cluster(nodes=2, prefix="cilct", lease_ttl=LEASE_TTL) as cluster:
        cluster.start()
        home, away = cluster.nodes
        for pod in PODS:
            (home if pod.name == "deathstar" else away).add_pod(pod.name, pod.labels)
        try:
            server = home.watch(home.serve_deathstar(port=80))
            cluster.wait_peers(timeout=90)  # two agents compiling their datapath on a loaded machine
            yield World(cluster, server)
        finally:
            for node in cluster.nodes:
                print(f"--- {node.prefix} agent log (tail)\n{node.agent_tail(4000)}")


def test_every_node_gives_a_pod_the_same_identity(world: World) -> None:
    ids = world.cluster.identities()
    assert set(ids) == {"deathstar", "tiefighter", "xwing"}, ids
    for pod, per_node in ids.items():
        assert len(per_node) == 2 and None not in per_node.values(), (pod, per_node)
        assert len(set(per_node.values())) == 1, f"{pod} has different identities on the nodes: {per_node}"
    assert len({next(iter(v.values())) for v in ids.values()}) == 3, ids  # and different label sets differ
    for node in world.cluster.nodes:
        kv = node.status()["kvstore"]
        assert kv["ok"] and kv["remote_nodes"] == 1, kv
        human = node.ciliate("status").stdout
        assert "Cluster:         etcd ok (node node" in human and "1 other nodes" in human, human


def test_without_policy_requests_cross_the_nodes(world: World) -> None:
    assert world.request("xwing", *LAND).get("status") == 200
    assert world.request("tiefighter", *EXHAUST).get("status") == 200


def test_l3l4_policy_on_the_receiving_node_judges_the_remote_identity(world: World) -> None:
    world.apply_everywhere(STARWARS / "1-l3l4.yaml", "starwars.yaml")
    before = len(world.hits("xwing"))
    assert world.request("tiefighter", *LAND).get("status") == 200
    out = world.request("xwing", *LAND, timeout=1.0)
    assert out.get("error") == "timeout", out
    assert len(world.hits("xwing")) == before, "the xwing's dropped request reached the deathstar"


def test_l7_rules_apply_across_nodes(world: World) -> None:
    world.apply_everywhere(STARWARS / "2-l7.yaml", "starwars.yaml")
    before = len(world.hits("tiefighter", "PUT"))
    assert world.request("tiefighter", *LAND).get("status") == 200
    denied = world.request("tiefighter", *EXHAUST)
    assert denied.get("status") == 403 and "Access denied" in denied.get("body", ""), denied
    assert len(world.hits("tiefighter", "PUT")) == before, "a request the L7 rules deny reached the deathstar"
    assert world.request("xwing", *LAND, timeout=1.0).get("error") == "timeout"


def test_the_same_policy_holds_over_ipv6_across_nodes(world: World) -> None:
    """The pods are dual-stack: node 2's IPv6 endpoints reach node 1 through
    etcd (their /128s with their identities) and the IPv6 pod CIDR route, and
    the L7 policy still in force judges them by the same identities."""
    home, away = world.home, world.away
    ds6 = f"[{home.pods['deathstar'].ip6}]:80"
    tie6 = away.pods["tiefighter"].ip6
    assert tie6 and home.pods["deathstar"].ip6
    seen = lambda: [ln for ln in world.server.snapshot() if ln.get("client") == tie6]  # noqa: E731
    before = len(seen())
    landed = away.request("tiefighter", LAND[0], ds6, LAND[1])
    assert landed.get("status") == 200, landed
    denied = away.request("tiefighter", EXHAUST[0], ds6, EXHAUST[1])
    assert denied.get("status") == 403, denied
    assert away.request("xwing", LAND[0], ds6, LAND[1], timeout=1.0).get("error") == "timeout"
    # Original source across nodes: the deathstar saw the tiefighter's own
    # IPv6 address, for the landing only.
    assert [(h["method"], h["path"]) for h in seen()[before:]] == [LAND], seen()[before:]
    peers = home.ciliate_json("status")["kvstore"]
    assert peers["remote_endpoints"] == 4, peers  # two ships, two addresses each


def test_sender_egress_and_receiver_ingress_l7_both_hold(world: World) -> None:
    """The ship's node proxies its egress (Envoy upstream to the other node,
    keeping the ship's address), the deathstar's node proxies its ingress:
    a request passes only when both allow it."""
    world.apply_everywhere(POLICIES / "tiefighter-egress-get.yaml", "egress.yaml")
    try:
        land = world.request("tiefighter", *LAND)
        assert land.get("status") == 403, f"the sender's egress rule (GET only) must deny the POST: {land}"
        world.apply_everywhere(POLICIES / "tiefighter-egress-any.yaml", "egress.yaml")
        assert world.request("tiefighter", *LAND).get("status") == 200
        exhaust = world.request("tiefighter", *EXHAUST)
        assert exhaust.get("status") == 403, f"the receiver's ingress rule must still deny the PUT: {exhaust}"
    finally:
        world.remove_everywhere("egress.yaml")


def test_the_senders_egress_deny_holds_whatever_the_receiver_allows(world: World) -> None:
    """The deathstar's node admits the tiefighter's landing at ingress; the
    tiefighter's own node denies its egress: the request never leaves."""
    world.apply_everywhere(POLICIES / "tiefighter-egress-deny.yaml", "egress-deny.yaml")
    try:
        before = len(world.hits("tiefighter"))
        out = world.request("tiefighter", *LAND, timeout=1.0)
        assert out.get("error") == "timeout", out
        assert len(world.hits("tiefighter")) == before, "a request the sender's node denies reached the deathstar"
    finally:
        world.remove_everywhere("egress-deny.yaml")
    assert world.request("tiefighter", *LAND).get("status") == 200


def test_a_restarted_agent_keeps_its_identities(world: World) -> None:
    before = world.cluster.identities()
    world.away.kill_agent()
    world.cluster.start_agent(2)
    world.cluster.wait_peers()
    assert world.cluster.identities() == before
    assert world.request("tiefighter", *LAND).get("status") == 200
    assert world.request("xwing", *LAND, timeout=1.0).get("error") == "timeout"


def test_etcd_down_keeps_enforcing_and_a_new_pod_waits_for_its_identity(world: World) -> None:
    world.cluster.etcd.stop()
    try:
        wait_for("the agents to notice etcd is gone", lambda: not world.away.status()["kvstore"]["ok"], timeout=20)
        assert world.request("tiefighter", *LAND).get("status") == 200
        assert world.request("xwing", *LAND, timeout=1.0).get("error") == "timeout"
        # A restart while etcd is away: the agent takes the cluster view its
        # previous run saved, so nothing allowed across nodes is dropped.
        world.home.kill_agent()
        world.cluster.start_agent(1, healthy=False)
        assert world.home.status()["kvstore"]["ok"] is False
        assert world.request("tiefighter", *LAND).get("status") == 200
        assert world.request("tiefighter", *EXHAUST).get("status") == 403
        assert world.request("xwing", *LAND, timeout=1.0).get("error") == "timeout"
        pod = world.away.add_pod("ywing", {"org": "alliance", "class": "ywing"})
        ep = world.away.ciliate_json("endpoint", "get", str(pod.endpoint_id))
        assert ep["state"] == "waiting-for-identity" and "etcd" in (ep.get("reason") or ""), ep
    finally:
        world.cluster.etcd.start()
    wait_for(
        "the new pod's identity once etcd is back",
        lambda: world.away.ciliate_json("endpoint", "get", str(world.away.pods["ywing"].endpoint_id))["state"] == "ready",
        timeout=30,
    )
    # two ships and the new pod, each with an IPv4 and an IPv6 address
    wait_for("node 1 to see the new pod", lambda: world.home.status()["kvstore"]["remote_endpoints"] == 6, timeout=30)
    # Node 1's own pod regenerated on a retry (every 2 s) once etcd answered
    # its restarted agent, independently of node 2: wait for the two nodes to
    # agree on every pod, the new one included, rather than catch node 1
    # between its retries.
    last: list[dict] = []

    def agreed() -> bool:
        ids = world.cluster.identities()
        last[:] = [ids]
        return set(ids) == {"deathstar", "tiefighter", "xwing", "ywing"} and all(
            len(per_node) == 2 and None not in per_node.values() and len(set(per_node.values())) == 1
            for per_node in ids.values()
        )

    try:
        wait_for("both nodes to give every pod one identity", agreed, timeout=30, every=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}: {last}; node 1's endpoints: {world.home.ciliate_json('endpoint', 'list')}") from None


def _lease_ttl(world: World, lease_id: int) -> int:
    """What etcd says is left of a lease: seconds, -1 once it expired."""
    out = subprocess.run(
        ["ip", "netns", "exec", world.cluster.net_ns, "etcdctl", f"--endpoints={ETCD_URL}", "lease", "timetolive",
         format(lease_id, "x"), "-w", "json"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"},
    )
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)["ttl"])


def test_a_dead_node_is_forgotten_when_its_lease_expires(world: World) -> None:
    """Judged by what etcd says of the dead node's lease, not by the clock: a
    loaded machine may send the last keepalive late, so the lease may have
    less than its TTL left when the node dies."""
    assert world.home.status()["kvstore"]["remote_nodes"] == 1
    lease_id = json.loads((world.away.state / "kvstore-lease.json").read_text())["lease_id"]
    world.away.kill_agent()
    deadline = time.monotonic() + LEASE_TTL + 30
    while True:
        # Node 1's view first, then etcd's: a node dropped while etcd still
        # holds its lease was dropped too early.
        remote = world.home.status()["kvstore"]["remote_nodes"]
        ttl = _lease_ttl(world, lease_id)
        if remote == 0:
            assert ttl < 0, f"node 1 dropped node 2 while etcd still held its lease ({ttl} s left)"
            break
        assert time.monotonic() < deadline, f"node 1 still has node 2 {LEASE_TTL + 30:.0f} s after it died (lease ttl {ttl})"
        time.sleep(0.2)
    kv = world.home.status()["kvstore"]
    assert kv["remote_endpoints"] == 0, kv
