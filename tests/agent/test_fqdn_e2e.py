"""toFQDNs and DNS rules through the real agent, kernel and Envoy, with a
real DNS server (Debian's dnsmasq) in a pod of the test's own and servers
outside the cluster (world hosts routed by the node).

The client pod may ask the resolver pod for allowed.test (and a few more
names) only: the kernel sends its DNS to the agent's DNS proxy, which
refuses other names and learns the addresses of allowed ones; only then may
the pod connect to them, and only to them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.node import Node

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]

HOSTS = {  # name -> (address, gateway on the node); world hosts, not pods
    "allowed": ("10.217.1.2", "10.217.1.1"),
    "other": ("10.217.2.2", "10.217.2.1"),
    "api": ("10.217.3.2", "10.217.3.1"),
    "short": ("10.217.4.2", "10.217.4.1"),
}
RECORDS = {  # DNS name -> (host, TTL)
    "allowed.test": ("allowed", 3600),
    "other.test": ("other", 3600),
    "api.test": ("api", 3600),
    "short.test": ("short", 2),
}

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: by-name, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [DNS_RULES]
  - toFQDNs: [FQDNS]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - toFQDNs: [{matchName: api.test}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: "/v1"}]}
"""
BY_NAME = POLICY.replace(
    "DNS_RULES", "{matchName: allowed.test}, {matchName: API.test.}, {matchName: short.test}, {matchName: pod.test}",
).replace("FQDNS", "{matchName: allowed.test}, {matchName: short.test}, {matchName: pod.test}")
BY_PATTERN = POLICY.replace("DNS_RULES", '{matchPattern: "*.test"}').replace("FQDNS", '{matchPattern: "*.test"}')


def dnsmasq_exe() -> str:
    exe = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None)
    if exe is None:
        pytest.skip("dnsmasq is not installed (scripts/install.sh installs Debian's dnsmasq-base)")
    return exe


@pytest.fixture
def node() -> Iterator[Node]:
    exe = dnsmasq_exe()
    with Node(prefix="cilfqdn", subnet="10.216.0.0/24") as n:
        n.start_agent()
        n.add_pod("client", {"app": "client"})
        dns_pod = n.add_pod("dns", {"app": "dns"})
        for name, (address, gateway) in HOSTS.items():
            n.add_host(name, address, gateway)
            n.serve_deathstar(name, 80)
        records = [f"--host-record={name},{HOSTS[host][0]},{ttl}" for name, (host, ttl) in RECORDS.items()]
        # A name the resolver points at a pod (the resolver's own): a name
        # must never open a cluster address.
        records.append(f"--host-record=pod.test,{dns_pod.ip},3600")
        n.serve_deathstar("dns", 80)
        proc = n.spawn("dns", [exe, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                               "--bind-interfaces", f"--listen-address={dns_pod.ip}",
                               *([f"--listen-address={dns_pod.ip6}"] if dns_pod.ip6 else []), "--port=53", "--pid-file=",
                               "--user=root", *records])
        deadline = time.monotonic() + 30
        while query(n, "allowed.test").get("rcode") != "NOERROR":
            assert proc.poll() is None and time.monotonic() < deadline, "dnsmasq did not start in the dns pod"
            time.sleep(0.2)
        yield n


def query(node: Node, name: str, tcp: bool = False, server: str | None = None) -> dict:
    out = subprocess.run(
        ["ip", "netns", "exec", node.pods["client"].netns, sys.executable, "-m", "tests.agent.dns_peer",
         server or node.pods["dns"].ip, name, *(["--tcp"] if tcp else [])],
        capture_output=True, text=True, timeout=60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def get(node: Node, host: str, path: str = "/v1", timeout: float = 1.0) -> dict:
    return node.request("client", "GET", HOSTS[host][0], path, timeout=timeout)


def apply(node: Node, tmp_path: Path, text: str) -> None:
    f = tmp_path / "by-name.yaml"
    f.write_text(text)
    node.apply_policy(f)


def cached(node: Node) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in node.ciliate_json("fqdn", "cache", "list")["entries"]:
        out.setdefault(e["name"], set()).add(e["address"])
    return out


def test_a_pod_reaches_the_names_it_may_resolve_and_nothing_else(node: Node, tmp_path: Path) -> None:
    apply(node, tmp_path, BY_NAME)
    # Before resolving: the address is not admitted, even dialled directly.
    assert "error" in get(node, "allowed")

    other = query(node, "other.test")
    assert other.get("rcode") == "REFUSED" and not other.get("addresses"), other
    assert "error" in get(node, "other"), "other.test's address is dropped in the kernel when dialled directly"

    got = query(node, "ALLOWED.test.")  # case and trailing dot are the same name
    assert got == {"rcode": "NOERROR", "addresses": [HOSTS["allowed"][0]], "ttl": 3600}, got
    # The answer is released once the datapath admits its address: the very
    # first connection goes through.
    assert get(node, "allowed").get("status") == 200
    assert "error" in get(node, "other"), "a name's answer opens its own addresses only"
    assert cached(node) == {"allowed.test.": {HOSTS["allowed"][0]}}

    # `ciliate monitor` (and the flow history) show each query with its verdict.
    dns = [e for e in node.api_get("/v1/flows/history")["events"] if e["type"] == "dns"]
    refused = [e for e in dns if e.get("dns_name") == "other.test."]
    admitted = [e for e in dns if e.get("dns_name") == "allowed.test."]
    client = node.pods["client"]
    assert refused and refused[0]["verdict"] == "denied" and refused[0]["dns_rcode"] == "REFUSED", refused
    assert admitted and admitted[-1]["verdict"] == "forwarded" and admitted[-1]["dns_addresses"] == [HOSTS["allowed"][0]]
    assert admitted[-1]["src_endpoint_id"] == client.endpoint_id and admitted[-1]["dst_ip"] == node.pods["dns"].ip
    assert admitted[-1]["dst_labels"] and "k8s:app=dns" in admitted[-1]["dst_labels"]

    tcp = query(node, "allowed.test", tcp=True)  # DNS over TCP takes the same path
    assert tcp.get("rcode") == "NOERROR" and tcp["addresses"] == [HOSTS["allowed"][0]], tcp
    assert query(node, "other.test", tcp=True).get("rcode") == "REFUSED"


def test_http_rules_on_a_name_are_enforced_by_envoy(node: Node, tmp_path: Path) -> None:
    apply(node, tmp_path, BY_NAME)
    assert "error" in get(node, "api")
    assert query(node, "api.test").get("rcode") == "NOERROR"
    assert get(node, "api", "/v1").get("status") == 200
    assert get(node, "api", "/v2").get("status") == 403, "Envoy denies what the HTTP rule does not admit"


def test_a_pattern_admits_every_matching_name(node: Node, tmp_path: Path) -> None:
    apply(node, tmp_path, BY_PATTERN)
    assert "error" in get(node, "other")
    assert query(node, "other.test").get("rcode") == "NOERROR"
    assert get(node, "other").get("status") == 200
    assert query(node, "other.example").get("rcode") == "REFUSED"


def cache_entries(node: Node, name: str) -> list[dict]:
    return [e for e in node.ciliate_json("fqdn", "cache", "list")["entries"] if e["name"] == name]


def test_an_address_stays_while_a_connection_uses_it_and_leaves_after(node: Node, tmp_path: Path) -> None:
    """Expiry as Cilium's: a name's address leaves the policy once its TTL
    passed and no connection of the pod still goes to it. The kept-alive
    connection runs through the TTL; once it is gone, so is the address."""
    apply(node, tmp_path, BY_NAME)
    assert query(node, "short.test").get("ttl") == 2
    lines = node.traffic("client", "GET", HOSTS["short"][0], "/v1", keepalive=True, interval=0.1)
    try:
        [entry] = cache_entries(node, "short.test.")
        deadline = time.monotonic() + 60
        while time.time() < entry["expires"] + 3:  # past the TTL, and a few expiry passes
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert cache_entries(node, "short.test."), "the address left while a connection still used it"
        seen = len(lines.snapshot())
        deadline = time.monotonic() + 30
        while len(lines.snapshot()) < seen + 5:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        out = lines.stop()
    replies = [ln for ln in out if "seq" in ln]
    assert replies and all(ln.get("status") == 200 for ln in replies), [ln for ln in replies if ln.get("status") != 200][:5]
    assert max(ln.get("conn", 1) for ln in replies) == 1, "the kept-alive connection was never replaced"
    # The connection is closed: its conntrack entries go (10 s after the
    # close), and with them the address.
    deadline = time.monotonic() + 60
    while cache_entries(node, "short.test."):
        assert time.monotonic() < deadline, "short.test never left the DNS cache after its connection closed"
        time.sleep(0.5)
    assert "error" in get(node, "short"), "a new connection after the expiry is dropped"


def test_learned_names_survive_an_agent_restart(node: Node, tmp_path: Path) -> None:
    apply(node, tmp_path, BY_NAME)
    assert query(node, "allowed.test").get("rcode") == "NOERROR"
    assert get(node, "allowed").get("status") == 200
    node.kill_agent()
    node.start_agent()
    assert get(node, "allowed").get("status") == 200, "a name resolved before the restart is still admitted"
    assert cached(node) == {"allowed.test.": {HOSTS["allowed"][0]}}


def test_dns_over_ipv6_takes_the_same_path(node: Node, tmp_path: Path) -> None:
    """A dual-stack pod asking the resolver's IPv6 address: redirected to the
    proxy's [::1] sockets, judged by the same rules."""
    resolver6 = node.pods["dns"].ip6
    assert resolver6 and node.pods["client"].ip6, "the node's pods are dual-stack"
    apply(node, tmp_path, BY_NAME)
    for tcp in (False, True):
        assert query(node, "other.test", tcp, resolver6).get("rcode") == "REFUSED"
        got = query(node, "allowed.test", tcp, resolver6)
        assert got.get("rcode") == "NOERROR" and got["addresses"] == [HOSTS["allowed"][0]], got
    assert get(node, "allowed").get("status") == 200


def test_a_name_answered_with_a_pods_address_does_not_open_that_pod(node: Node, tmp_path: Path) -> None:
    apply(node, tmp_path, BY_NAME)
    dns_ip = node.pods["dns"].ip
    got = query(node, "pod.test")
    assert got.get("rcode") == "NOERROR" and got["addresses"] == [dns_ip], got  # the pod sees the answer...
    assert "error" in node.request("client", "GET", dns_ip, "/v1", timeout=1.0), "...but may not connect to the pod by name"
    assert "pod.test." not in cached(node)


RESOLVER_INGRESS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: resolver-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: dns}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: somebody-else}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}]}]
"""


def test_the_resolvers_ingress_policy_holds_beside_the_clients_dns_rule(node: Node, tmp_path: Path) -> None:
    """Where the client's egress DNS rule meets the resolver's ingress: both
    must admit the query. The redirect to the proxy happens only after the
    resolver's ingress admitted the client, so the proxy (which asks from the
    node's address) never carries a query the resolver refuses."""
    apply(node, tmp_path, BY_NAME)
    f = tmp_path / "resolver-ingress.yaml"
    f.write_text(RESOLVER_INGRESS)
    node.apply_policy(f)
    for tcp in (False, True):
        got = query(node, "allowed.test", tcp)
        assert "error" in got, f"the resolver's ingress refuses the client, yet it got {got}"
    assert "allowed.test." not in cached(node), "nothing was learned through a query the resolver refuses"
    node.remove_policy("resolver-ingress.yaml")
    assert query(node, "allowed.test").get("rcode") == "NOERROR"
