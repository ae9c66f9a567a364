"""The datapath enforces IPv6 as it does IPv4: real IPv6 traffic between
pods of a test node, wired by ciliate-cni's own code (agent/cni/net6.py).

a and b are dual-stack endpoints; c has no program (an unmanaged peer, the
world as far as a's policy knows). Every drop is shown by the server socket
that never saw the packet."""

from __future__ import annotations

import asyncio
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv6Address
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from agent.adapters.kernel_datapath import DISABLE_IPV6, KernelDatapath
from agent.core.ports import EndpointUnsupported
from policy.compiled import EndpointPolicy, Protocol, Verdict
from redirect import conntrack, tc
from redirect.datapath import BLOCK_NAME, Datapath
from redirect.layout import EventVerdict, Hook, Reason
from tests.datapath.conftest import ENDPOINT_IDS, IDENTITIES, Install
from tests.datapath.support import EGRESS, INGRESS, NODE6, TCP, UDP, Ep, endpoint, exchange, rule, state, tcp_flow_passes
from tests.kernelnode import Pod, in_netns, wire_ipv6

pytestmark = pytest.mark.privileged

IPV6 = {"a": IPv6Address("fd00:201::2"), "b": IPv6Address("fd00:201::3"), "c": IPv6Address("fd00:201::9")}
# WAIT bounds what must happen (it returns as soon as it does: a hang guard,
# generous so a loaded machine passes); DENIED_WAIT is how long a dropped
# packet is given to (not) arrive.
WAIT, DENIED_WAIT = 10.0, 0.4
IPV6_FREEBIND = 78  # linux/in6.h: bind to an address the pod does not own (a forged source)


def _sock6(pod: Pod, kind: int) -> socket.socket:
    with in_netns(pod.netns):
        return socket.socket(socket.AF_INET6, kind)


def _listener6(pod: Pod, port: int) -> socket.socket:
    """A TCP server socket on [::]:port in the pod."""
    srv = _sock6(pod, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    srv.listen(4)
    return srv


def tcp6_passes(client: Pod, server: Pod, port: int, expect: bool) -> bool:
    """A TCP connection over IPv6 with a byte each way; True if the server's
    socket saw the connection."""
    srv, cli = _sock6(server, socket.SOCK_STREAM), _sock6(client, socket.SOCK_STREAM)
    conn = None
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((str(IPV6[server.name]), port))
        srv.listen(4)
        cli.settimeout(WAIT if expect else DENIED_WAIT)
        try:
            cli.connect((str(IPV6[server.name]), port))
            connected = True
        except OSError:
            connected = False
        # connected: the server's side of the handshake completes an instant
        # later; not connected: a last look for a stray arrival
        if not select.select([srv], [], [], WAIT if connected else 0.2)[0]:
            return False
        conn, _ = srv.accept()
        conn.settimeout(WAIT)
        exchange(cli, conn)
        return True
    finally:
        for s in (cli, srv, conn):
            if s is not None:
                s.close()


def udp6_roundtrip(client: Pod, server: Pod, port: int, expect: bool, src: IPv6Address | None = None) -> tuple[bool, bool]:
    """(server got the datagram, client got the reply). `src`: send from this
    address instead of the client's own (a forgery)."""
    srv, cli = _sock6(server, socket.SOCK_DGRAM), _sock6(client, socket.SOCK_DGRAM)
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("::", port))
        if src is not None:
            cli.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            with in_netns(client.netns):
                scope = socket.if_nametoindex("eth0") if src.is_link_local else 0
            cli.bind((str(src), 0, 0, scope))
        cli.sendto(b"ping", (str(IPV6[server.name]), port))
        if not select.select([srv], [], [], WAIT if expect else DENIED_WAIT)[0]:
            return (False, False)
        data, addr = srv.recvfrom(100)
        srv.sendto(b"pong:" + data, addr)
        r = select.select([cli], [], [], WAIT)[0]
        return (True, bool(r) and cli.recv(100) == b"pong:ping")
    finally:
        cli.close()
        srv.close()


def endpoint6(ep: Ep, entries=(), ingress: bool = True, egress: bool = True) -> EndpointPolicy:
    return endpoint(ep, entries, ingress, egress, ipv6=IPV6[ep.pod.name])


def state6(revision: int, endpoints, extra6: dict[str, int] | None = None):
    return state(revision, endpoints, extra6)


@pytest.fixture(scope="module")
def node6() -> Iterator[Install]:
    from tests.datapath.conftest import make_install

    with make_install(attach=()) as inst:
        for name in ("a", "b", "c"):
            wire_ipv6(inst.node.netns, inst.node.pods[name], str(IPV6[name]), str(NODE6))
        assert tcp6_passes(inst.node.pods["a"], inst.node.pods["b"], 8080, True), "the wiring carries IPv6"
        for name in ("a", "b"):
            p = inst.node.pods[name]
            inst.dp.attach_endpoint(ENDPOINT_IDS[name], p.host_ifname, p.ip, IDENTITIES[name], IPV6[name])
        yield inst


@pytest.fixture
def n6(node6: Install) -> Iterator[Install]:
    node6.dp.maps.flush_ct()
    yield node6
    node6.dp.maps.flush_ct()


def _events(inst: Install, fn, until=None) -> list:
    """The events `fn` caused; with `until`, drained until it holds for them
    (at most WAIT): a packet sent may be judged an instant after the send."""
    with inst.dp.events() as stream:
        stream.drain()
        fn()
        evs = stream.drain()
        deadline = time.monotonic() + WAIT
        while until is not None and not until(evs) and time.monotonic() < deadline:
            time.sleep(0.01)
            evs += stream.drain()
        return evs


def _a_drop(evs: list) -> bool:
    return any(e.verdict == EventVerdict.DROP for e in evs)


def test_tcp_over_ipv6_is_decided_by_the_same_policy_as_ipv4(n6):
    a, b = n6.ep("a"), n6.ep("b")
    n6.dp.apply(state6(1, [endpoint6(a, [rule(257, EGRESS, TCP, 8080)], ingress=False),
                           endpoint6(b, [], ingress=False, egress=False)]))
    evs = _events(n6, lambda: tcp6_passes(a.pod, b.pod, 8080, True) or pytest.fail("allowed IPv6 flow dropped"))
    fwd = [e for e in evs if e.verdict == EventVerdict.FORWARD]
    assert fwd and fwd[0].src == IPV6["a"] and fwd[0].dst == IPV6["b"] and fwd[0].dport == 8080
    assert (fwd[0].src_identity, fwd[0].dst_identity, fwd[0].reason) == (256, 257, Reason.POLICY_ALLOW)
    assert "[fd00:201::2]:" in str(fwd[0])
    evs = _events(n6, lambda: tcp6_passes(a.pod, b.pod, 8081, False) and pytest.fail("denied IPv6 flow reached b"))
    drops = [e for e in evs if e.verdict == EventVerdict.DROP]
    assert drops and drops[0].reason == Reason.NO_POLICY_MATCH and drops[0].dst == IPV6["b"]
    # IPv4 gets the same verdicts from the same entries.
    assert tcp_flow_passes(a.pod, b.pod, 8080, True)
    assert not tcp_flow_passes(a.pod, b.pod, 8081, False)
    # Both flows are tracked, each family in its own table.
    families = {e.saddr.version for e in conntrack.read(n6.dp.maps)}
    assert families == {4, 6}


def test_ingress_policy_over_ipv6_and_replies_pass_back(n6):
    a, b = n6.ep("a"), n6.ep("b")
    n6.dp.apply(state6(1, [endpoint6(a, [], ingress=False, egress=False),
                           endpoint6(b, [rule(256, INGRESS, TCP, 9090)], egress=True)]))
    assert tcp6_passes(a.pod, b.pod, 9090, True)  # b's egress enforces nothing it allowed: replies via conntrack
    assert not tcp6_passes(b.pod, a.pod, 9090, False)  # b may not open connections (egress enforced, no rule)
    assert not tcp6_passes(a.pod, b.pod, 9091, False)


def test_udp_over_ipv6_with_reply_and_denied_on_another_port(n6):
    a, b = n6.ep("a"), n6.ep("b")
    n6.dp.apply(state6(1, [endpoint6(a, [rule(257, EGRESS, UDP, 5353)], ingress=False),
                           endpoint6(b, [], ingress=False, egress=True)]))
    assert udp6_roundtrip(a.pod, b.pod, 5353, True) == (True, True)
    assert udp6_roundtrip(a.pod, b.pod, 5354, False) == (False, False)


def test_ipv6_cidr_allow_and_except(n6):
    """c (unmanaged, fd00:201::9) is world to a unless a CIDR covers it:
    toCIDRSet fd00:201::/64 except fd00:201::8/125 compiles to two
    identities, the except's unallowed."""
    a, c = n6.ep("a"), n6.node.pods["c"]
    cidr, excepted = (1 << 24) + 60, (1 << 24) + 61
    eps = lambda: [endpoint6(a, [rule(cidr, EGRESS, TCP, 8080)], ingress=False),  # noqa: E731
                   endpoint6(n6.ep("b"), [], ingress=False, egress=False)]
    n6.dp.apply(state6(1, eps(), {"fd00:201::/64": cidr}))
    evs = _events(n6, lambda: tcp6_passes(a.pod, c, 8080, True) or pytest.fail("CIDR-allowed flow dropped"))
    assert [e.dst_identity for e in evs if e.verdict == EventVerdict.FORWARD][:1] == [cidr]
    n6.dp.apply(state6(2, eps(), {"fd00:201::/64": cidr, "fd00:201::8/125": excepted}))
    assert not tcp6_passes(a.pod, c, 8080, False)
    # Longest prefix: b's /128 inside the /64 keeps b's own identity, not the CIDR's.
    assert not tcp6_passes(a.pod, n6.node.pods["b"], 8080, False)


def test_a_pod_that_forges_another_ipv6_source_is_dropped(n6):
    a, b, c = n6.ep("a"), n6.ep("b"), n6.node.pods["c"]
    n6.dp.apply(state6(1, [endpoint6(a, [], ingress=False, egress=False),
                           endpoint6(b, [], ingress=False, egress=False)]))
    assert udp6_roundtrip(a.pod, c, 7000, True) == (True, True)  # its own address: passes
    for forged in (IPV6["b"], IPv6Address("fd00:201::77"), IPv6Address("fe80::1234")):
        evs = _events(n6, lambda: udp6_roundtrip(a.pod, c, 7000, False, src=forged) == (False, False)
                      or pytest.fail(f"a datagram from forged {forged} reached c"))
        drops = [e for e in evs if e.verdict == EventVerdict.DROP]
        assert drops and drops[0].reason == Reason.SOURCE_SPOOFED and drops[0].src == forged, forged


def test_neighbour_discovery_passes_an_endpoint_that_enforces_everything(n6):
    """With the pinned neighbour entries gone both ends resolve each other
    with NS/NA through programs whose policy admits nothing else."""
    a, c = n6.ep("a"), n6.node.pods["c"]
    n6.dp.apply(state6(1, [endpoint6(a, [rule(2, EGRESS, UDP, 7001)]),
                           endpoint6(n6.ep("b"), [], ingress=False, egress=False)]))
    with in_netns(n6.node.netns), IPRoute() as ipr:
        ipr.neigh("del", dst=str(IPV6["a"]), ifindex=a.pod.host_ifindex)
    subprocess.run(a.pod.argv(["ip", "-6", "neigh", "flush", "dev", "eth0", "nud", "all"]), check=True)
    assert udp6_roundtrip(a.pod, c, 7001, True) == (True, True)
    out = subprocess.run(a.pod.argv(["ip", "-6", "neigh", "show", "dev", "eth0"]), capture_output=True, text=True).stdout
    assert "fe80::1" in out and "lladdr" in out, out
    assert udp6_roundtrip(a.pod, c, 7002, False) == (False, False)


@pytest.fixture
def own_install(fresh_install) -> Iterator[Install]:
    """An install of its own (a and c wired for IPv6, nothing attached) that
    the agent's adapter drives; built here because pyroute2's blocking calls
    must not run on the test's event loop."""
    with fresh_install(attach=()) as inst:
        inst.dp.close()  # the adapter owns the install from here
        try:
            for name in ("a", "c"):
                wire_ipv6(inst.node.netns, inst.node.pods[name], str(IPV6[name]), str(NODE6))
            yield inst
        finally:
            inst.dp = Datapath(inst.pin_dir, inst.state_dir, netns=inst.node.netns)  # teardown adopts it all


async def test_an_ipv6_only_endpoint_is_enforced(own_install) -> None:
    inst = own_install
    kd = KernelDatapath(inst.pin_dir, inst.state_dir, netns=inst.node.netns)
    try:
        assert [(f.version, f.enforced) for f in kd.families()] == [(4, True), (6, True)]
        a, c = inst.node.pods["a"], inst.node.pods["c"]
        await kd.attach_endpoint(ENDPOINT_IDS["c"], c.host_ifname, None, IDENTITIES["c"], IPV6["c"])
        only6 = EndpointPolicy(ENDPOINT_IDS["c"], IDENTITIES["c"], None, True, False,
                               (rule(2, INGRESS, TCP, 8080),), ipv6=IPV6["c"])
        outcome = await kd.apply(state6(1, [only6]))
        assert not outcome.failed
        assert await asyncio.to_thread(tcp6_passes, a, c, 8080, True)
        assert not await asyncio.to_thread(tcp6_passes, a, c, 8081, False)
        # Its veth has no IPv4 in the maps: an IPv4 packet has no endpoint to be.
        assert not await asyncio.to_thread(tcp_flow_passes, a, c, 8080, False)
        (rec,) = await kd.attached_endpoints()
        assert (rec.ipv4, rec.ipv6) == (None, IPV6["c"])
    finally:
        await kd.close()


async def test_a_node_without_ipv6_blocks_an_ipv6_only_endpoint(own_install) -> None:
    inst = own_install

    def disable() -> None:
        with in_netns(inst.node.netns):
            Path(DISABLE_IPV6).write_text("1")

    await asyncio.to_thread(disable)
    kd = KernelDatapath(inst.pin_dir, inst.state_dir, netns=inst.node.netns)
    try:
        six = kd.families()[1]
        assert not six.enforced and "disable_ipv6" in six.detail
        c = inst.node.pods["c"]
        with pytest.raises(EndpointUnsupported, match="IPv6 is disabled"):
            await kd.attach_endpoint(ENDPOINT_IDS["c"], c.host_ifname, None, IDENTITIES["c"], IPV6["c"])
        now = await asyncio.to_thread(tc.attached, c.host_ifname, inst.node.netns)
        assert now is not None and (now.ingress, now.egress) == (BLOCK_NAME, BLOCK_NAME)
    finally:
        await kd.close()


# ---------------------------------------------------------------- L7 redirect over IPv6

IPV6_TRANSPARENT = 75  # linux/in6.h
PROXY_PORT = 15061


def transparent_listener6(inst: Install, port: int) -> socket.socket:
    """The proxy's IPv6 listener as Envoy opens it: [::]:port, IPv6 only, transparent."""
    with in_netns(inst.node.netns):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    s.bind(("::", port))
    s.listen(8)
    s.settimeout(WAIT)
    return s


def through_proxy(inst: Install, lst: socket.socket, cli: socket.socket, srv: socket.socket) -> tuple[tuple, list]:
    """Connect `cli` to b:80 with the flow redirected to the proxy `lst`: the
    proxy sees the original destination, the flow carries both ways and stays
    redirected, the real server `srv` sees nothing. Returns the proxy's view
    of the client's address and the REDIRECT events."""
    with inst.dp.events() as stream:
        stream.drain()
        cli.settimeout(WAIT)
        cli.connect((str(IPV6["b"]), 80))
        lst.settimeout(WAIT)
        conn, peer = lst.accept()
        with conn:
            assert conn.getsockname()[:2] == (str(IPV6["b"]), 80)  # the original destination
            exchange(cli, conn)
            exchange(cli, conn)  # a redirected flow stays redirected
        assert not select.select([srv], [], [], 0.1)[0], "the server saw a redirected flow"
        return peer[:2], [e for e in stream.drain() if e.verdict == EventVerdict.REDIRECT]


@pytest.fixture
def plumbed(n6: Install) -> Iterator[Install]:
    n6.dp.setup_proxy_plumbing()
    yield n6


@pytest.mark.parametrize("direction", [EGRESS, INGRESS], ids=["egress-redirect", "ingress-redirect"])
def test_an_ipv6_flow_is_redirected_to_the_proxy_with_its_original_addresses(plumbed, direction):
    a, b = plumbed.ep("a"), plumbed.ep("b")
    redirect = lambda peer, d: rule(peer, d, TCP, 80, Verdict.REDIRECT, PROXY_PORT)  # noqa: E731
    if direction == EGRESS:
        eps = [endpoint6(a, [redirect(257, EGRESS)], ingress=False), endpoint6(b, [rule(256, INGRESS, TCP, 80)], egress=False)]
    else:
        eps = [endpoint6(a, [rule(257, EGRESS, TCP, 80)], ingress=False), endpoint6(b, [redirect(256, INGRESS)], egress=False)]
    plumbed.dp.apply(state6(1, eps))
    lst = transparent_listener6(plumbed, PROXY_PORT)
    srv, cli = _listener6(b.pod, 80), _sock6(a.pod, socket.SOCK_STREAM)
    try:
        peer, ev = through_proxy(plumbed, lst, cli, srv)
        assert peer == (str(IPV6["a"]), cli.getsockname()[1])  # and the original source
        assert ev and ev[0].proxy_port == PROXY_PORT and ev[0].src == IPV6["a"] and ev[0].direction == direction
    finally:
        for s in (cli, srv, lst):
            s.close()


@pytest.mark.parametrize("allowed", [True, False], ids=["receiver-allows-client", "receiver-denies-client"])
def test_a_proxy_upstream_over_ipv6_keeps_the_client_address_and_gets_its_replies(plumbed, allowed):
    """As Envoy's original_src upstream: bound to a's IPv6 (transparent),
    SO_MARK 0x0B00. b's ingress judges a's identity; b's replies, addressed
    to a, come back to the node's socket, not to a's veth."""
    a, b = plumbed.ep("a"), plumbed.ep("b")
    plumbed.dp.apply(state6(1, [endpoint6(a, [], ingress=False, egress=False),
                                endpoint6(b, [rule(256 if allowed else 258, INGRESS, TCP, 8080)], egress=False)]))
    srv = _listener6(b.pod, 8080)
    with in_netns(plumbed.node.netns):
        up = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x0B00)
        up.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        up.bind((str(IPV6["a"]), 0))
        up.settimeout(WAIT if allowed else DENIED_WAIT)
        try:
            up.connect((str(IPV6["b"]), 8080))
            connected = True
        except OSError:
            connected = False
        assert connected is allowed
        got = select.select([srv], [], [], WAIT if allowed else 0.1)[0]
        assert bool(got) is allowed
        if allowed:
            conn, peer = srv.accept()
            with conn:
                assert peer[0] == str(IPV6["a"])  # b sees the client
                for _ in range(3):
                    up.sendall(b"x")
                    assert conn.recv(1) == b"x"
                    conn.sendall(b"y")
                    assert up.recv(1) == b"y"
    finally:
        up.close()
        srv.close()


# ---------------------------------------------------------------- a policy file, compiled, enforced

CIDR_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-the-range, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toCIDRSet:
    - cidr: fd00:201::/64
      except: [%s]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""


@pytest.mark.parametrize("excepted, reaches_c", [("fd00:201::8/125", False), ("fd00:201::f0/124", True)],
                         ids=["c-inside-the-except", "c-outside-the-except"])
def test_an_ipv6_cidr_set_with_except_compiled_from_a_policy_file(n6, excepted, reaches_c):
    """The real compiler, dual-stack, from CiliumNetworkPolicy text to the
    kernel: c (unmanaged, fd00:201::9) is reached through the CIDR unless
    the except covers it; port 8081 is never allowed; IPv4 world traffic is
    not opened by an IPv6 rule."""
    from policy.compiler import compile_state
    from policy.endpoint import Endpoint
    from policy.families import Stack
    from policy.load import load_text

    a, b, c = n6.node.pods["a"], n6.node.pods["b"], n6.node.pods["c"]
    loaded = load_text(CIDR_POLICY % excepted, "cidr.yaml")
    assert not loaded.errors, loaded.errors
    eps = [Endpoint(ENDPOINT_IDS["a"], {"app": "a"}, a.ip, IPV6["a"]), Endpoint(ENDPOINT_IDS["b"], {"app": "b"}, b.ip, IPV6["b"])]
    st = compile_state(loaded.policies, eps, stack=Stack.DUAL, host_ips=[NODE6])
    res = n6.dp.apply(st)
    assert res.ok, res.failed
    try:
        assert tcp6_passes(a, c, 8080, reaches_c) is reaches_c
        assert not tcp6_passes(a, c, 8081, False)
        assert not tcp_flow_passes(a, c, 8080, False)  # c's IPv4 is world-ipv4: the rule names IPv6 only
    finally:
        # The module's endpoints keep their compiled identities; give them back.
        n6.dp.apply(state6(99, [endpoint6(n6.ep("a"), ingress=False, egress=False),
                                endpoint6(n6.ep("b"), ingress=False, egress=False)]))


# ---------------------------------------------------------------- ICMPv6 errors of tracked flows

IPV6_MTU = 24  # linux/in6.h: the path MTU a connected socket sees


def _packet_too_big(router: Pod, to: IPv6Address, quoted_src: IPv6Address, quoted_dst: IPv6Address,
                    sport: int, dport: int, mtu: int = 1280) -> None:
    """An ICMPv6 Packet Too Big from `router`, quoting a UDP packet
    quoted_src:sport -> quoted_dst:dport (the kernel fills the checksum)."""
    import struct

    udp = struct.pack("!HHHH", sport, dport, 8 + 1400, 0)
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(udp) + 1400, 17, 64, quoted_src.packed, quoted_dst.packed)
    body = struct.pack("!BBHI", 2, 0, 0, mtu) + ip6 + udp + b"\0" * 64
    with in_netns(router.netns):
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        s.sendto(body, (str(to), 0))
    finally:
        s.close()


def test_a_packet_too_big_about_a_tracked_flow_reaches_the_pod_without_an_allow(n6):
    """a admits nothing in; c, a router on a's path, tells a its datagrams
    are too big. Related to a's tracked flow, the error passes (path MTU
    discovery works); about a flow a never had, it is policed and dropped."""
    a, c = n6.ep("a"), n6.node.pods["c"]
    n6.dp.apply(state6(1, [endpoint6(a, [rule(2, EGRESS, UDP, 7003)], ingress=True, egress=True),
                           endpoint6(n6.ep("b"), [], ingress=False, egress=False)]))
    srv, cli = _sock6(c, socket.SOCK_DGRAM), _sock6(a.pod, socket.SOCK_DGRAM)
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("::", 7003))
        cli.connect((str(IPV6["c"]), 7003))
        cli.send(b"x")
        assert select.select([srv], [], [], WAIT)[0], "the allowed datagram did not arrive"
        sport = cli.getsockname()[1]
        assert cli.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU) == 1500

        evs = _events(n6, lambda: _packet_too_big(c, IPV6["a"], IPV6["a"], IPV6["c"], sport, 7003))
        deadline = time.monotonic() + WAIT
        while cli.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU) != 1280 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cli.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU) == 1280, "the related Packet Too Big never reached a"
        assert not [e for e in evs if e.verdict == EventVerdict.DROP], evs

        # Quoting a flow a never opened (another port): not related, policed, dropped.
        evs = _events(n6, lambda: _packet_too_big(c, IPV6["a"], IPV6["a"], IPV6["c"], sport, 7999), until=_a_drop)
        drops = [e for e in evs if e.verdict == EventVerdict.DROP]
        assert drops and drops[0].protocol == 58 and drops[0].reason == Reason.NO_POLICY_MATCH, evs
    finally:
        cli.close()
        srv.close()


def test_neighbour_discovery_addressed_past_the_link_is_policed(n6):
    """An NA with hop limit 255 passes unpoliced only to a destination the
    node never forwards; sent to another host's global address it would be
    a channel past egress policy, so it is policed (here: dropped)."""
    import struct

    a, c = n6.ep("a"), n6.node.pods["c"]
    n6.dp.apply(state6(1, [endpoint6(a, [], ingress=False, egress=True),
                           endpoint6(n6.ep("b"), [], ingress=False, egress=False)]))
    with in_netns(c.netns):
        sniff = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    with in_netns(a.pod.netns):
        raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        na = struct.pack("!BBHI16s", 136, 0, 0, 0x20000000, IPV6["a"].packed)  # unsolicited NA, override
        evs = _events(n6, lambda: raw.sendto(na, (str(IPV6["c"]), 0)), until=_a_drop)
        seen = []
        while select.select([sniff], [], [], DENIED_WAIT)[0]:
            seen.append(sniff.recv(200)[0])  # ICMPv6 type (MLD and others may come too)
        assert 136 not in seen, "the NA reached c"
        drops = [e for e in evs if e.verdict == EventVerdict.DROP]
        assert drops and drops[0].protocol == 58 and drops[0].dst == IPV6["c"], evs
    finally:
        raw.close()
        sniff.close()


@pytest.mark.parametrize("source", ["node", "unmanaged-pod"])
def test_an_ipv6_ingress_redirect_of_traffic_not_from_an_endpoint_goes_through_lo(plumbed, source):
    """IPv6 packets reach b's to_container already routed (from the node, or
    from c, which has no program): they reach the proxy through lo, where
    bpf_lo.c assigns its IPv6 socket."""
    b = plumbed.ep("b")
    plumbed.dp.apply(state6(1, [endpoint6(plumbed.ep("a"), [], ingress=False, egress=False),
                                endpoint6(b, [rule(0, INGRESS, TCP, 80, Verdict.REDIRECT, PROXY_PORT)], egress=True)]))
    lst = transparent_listener6(plumbed, PROXY_PORT)
    srv = _listener6(b.pod, 80)
    if source == "node":
        with in_netns(plumbed.node.netns):
            cli = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    else:
        cli = _sock6(plumbed.node.pods["c"], socket.SOCK_STREAM)
    try:
        peer, ev = through_proxy(plumbed, lst, cli, srv)
        assert peer == cli.getsockname()[:2]
        assert ev and ev[0].hook == Hook.TO_ENDPOINT and ev[0].proxy_port == PROXY_PORT and ev[0].dst == IPV6["b"]
    finally:
        for s in (cli, srv, lst):
            s.close()


def _echo6(client: Pod, dst: IPv6Address, ident: int, wait: float) -> bool:
    """One ICMPv6 echo request from the pod; True if its reply came back."""
    import struct

    with in_netns(client.netns):
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, 1) + b"cdp", (str(dst), 0))  # the kernel sums it
        while select.select([s], [], [], wait)[0]:
            typ, _, _, rid, _ = struct.unpack("!BBHHH", s.recv(200)[:8])
            if typ == 129 and rid == ident:
                return True
        return False
    finally:
        s.close()


def test_icmpv6_echo_needs_an_allow_and_a_request_reusing_a_pods_id_is_not_its_reply(n6):
    """a may ping b (L3 allow) and nothing may reach a. b's echo request with
    the id of a's own ping must not ride the entry a's ping left for its
    reply (Cilium's GHSA-c66w-hq56-4q97, over IPv6)."""
    a, b = n6.ep("a"), n6.ep("b")
    n6.dp.apply(state6(1, [endpoint6(a, [rule(257, EGRESS, Protocol.ANY)], ingress=True),
                           endpoint6(b, [], ingress=False, egress=False)]))
    ident = 4242
    assert _echo6(a.pod, IPV6["b"], ident, WAIT)
    assert not _echo6(b.pod, IPV6["a"], ident, DENIED_WAIT), "b's echo request rode a's conntrack entry into a"
    n6.dp.apply(state6(2, [endpoint6(a, [rule(257, EGRESS, TCP)], ingress=True),
                           endpoint6(b, [], ingress=False, egress=False)]))
    assert not _echo6(a.pod, IPV6["b"], ident + 1, DENIED_WAIT)  # a TCP rule never admits ICMPv6


@pytest.mark.parametrize(
    "entries, expect",
    [
        pytest.param([rule(257, EGRESS, Protocol.ICMPV6, 128)], True, id="echo-request-type"),
        pytest.param([rule(257, EGRESS, Protocol.ICMPV6, 129)], False, id="echo-reply-type"),
        pytest.param([rule(257, EGRESS, Protocol.ICMP, 128)], False, id="icmpv4-type-128"),
        pytest.param([rule(257, EGRESS, Protocol.ANY, 128)], False, id="port-128-of-any-protocol"),
    ],
)
def test_icmpv6_is_decided_by_message_type(n6, entries, expect):
    """An `icmps` rule of family IPv6 admits that ICMPv6 type only; the
    admitted request's reply comes back through conntrack."""
    a, b = n6.ep("a"), n6.ep("b")
    n6.dp.apply(state6(1, [endpoint6(a, entries, ingress=True), endpoint6(b, [], ingress=False, egress=False)]))
    assert _echo6(a.pod, IPV6["b"], 4343, WAIT if expect else DENIED_WAIT) is expect


def test_a_pods_icmp_error_passes_only_back_to_the_sender_it_reports_on(n6):
    """a may send only UDP/7004 to c. c's datagram to a is tracked; an error
    a sends about it goes back to c as related, but the same "error" sent to
    b (which a may not reach) is policed and dropped: no channel past egress."""
    import struct

    a, b, c = n6.ep("a"), n6.ep("b"), n6.node.pods["c"]
    n6.dp.apply(state6(1, [endpoint6(a, [rule(2, EGRESS, UDP, 7004)], ingress=False, egress=True),
                           endpoint6(b, [], ingress=False, egress=False)]))
    srv, sender = _sock6(a.pod, socket.SOCK_DGRAM), _sock6(c, socket.SOCK_DGRAM)
    sniffers = {}
    for name, pod in (("b", b.pod), ("c", c)):
        with in_netns(pod.netns):
            sniffers[name] = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    with in_netns(a.pod.netns):
        raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        srv.bind(("::", 7005))
        sender.bind(("::", 7006))
        sender.sendto(b"hi", (str(IPV6["a"]), 7005))
        assert select.select([srv], [], [], WAIT)[0]
        quoted = struct.pack("!IHBB16s16s", 6 << 28, 10, 17, 64, IPV6["c"].packed, IPV6["a"].packed) + \
            struct.pack("!HHHH", 7006, 7005, 10, 0)
        unreachable = struct.pack("!BBHI", 1, 4, 0, 0) + quoted + b"hi"  # port unreachable

        def errors_at(name: str, expect: bool) -> int:
            """Unreachables the pod's raw socket got: waiting up to WAIT for
            one that must come, DENIED_WAIT for one that must not."""
            n, s = 0, sniffers[name]
            wait = WAIT if expect else DENIED_WAIT
            while select.select([s], [], [], wait)[0]:
                n += s.recv(300)[0] == 1
                wait = 0.1 if n else wait  # after the one expected, only stragglers
            return n

        raw.sendto(unreachable, (str(IPV6["c"]), 0))
        assert errors_at("c", True) == 1, "the related error did not reach the flow's sender"
        raw.sendto(unreachable, (str(IPV6["b"]), 0))
        assert errors_at("b", False) == 0, "an error about c's flow reached b, whom a may not reach"
    finally:
        for s in (srv, sender, raw, *sniffers.values()):
            s.close()


def _sctp6(src: Pod, dst: Pod, dport: int, wait: float) -> bool:
    """One SCTP packet (raw: the kernel has no SCTP sockets) from src to dst
    over IPv6; True if dst's raw socket got it (IPv6 raw sockets get the
    payload only)."""
    import struct

    with in_netns(src.netns):
        tx = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_SCTP)
    with in_netns(dst.netns):
        rx = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_SCTP)
    try:
        tx.sendto(struct.pack("!HHII", 40000, dport, 0, 0) + struct.pack("!BBHIIHHI", 1, 0, 20, 1, 65535, 1, 1, 7),
                  (str(IPV6[dst.name]), 0))
        while select.select([rx], [], [], wait)[0]:
            if struct.unpack("!HH", rx.recv(2048)[:4]) == (40000, dport):
                return True
        return False
    finally:
        tx.close()
        rx.close()


def test_sctp_over_ipv6_is_decided_by_port(n6):
    a, b = n6.ep("a"), n6.ep("b")
    n6.dp.apply(state6(1, [endpoint6(a, [rule(257, EGRESS, Protocol.SCTP, 9000)], ingress=False),
                           endpoint6(b, [rule(256, INGRESS, Protocol.SCTP, 9000)], egress=False)]))
    assert _sctp6(a.pod, b.pod, 9000, WAIT)
    assert not _sctp6(a.pod, b.pod, 9001, DENIED_WAIT)
