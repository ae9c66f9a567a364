"""Host policies in the kernel: the node as an endpoint (HOST_ENDPOINT_ID).

Pod c's veth serves as one of the node's devices (the programs of
bpf/bpf_host.c on it, c itself unmanaged: an outside host). The node's
address GATEWAY is a host address in the ipcache, so its lxc entries are the
host endpoint's. What the node receives from c, sends to c, receives from a
pod and sends to a pod is judged by the host endpoint's policy; every drop is
shown from the server's side (nothing arrived)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from policy.compiled import HOST_ENDPOINT_ID, EndpointPolicy, PolicyEntry
from redirect.layout import EventVerdict, Reason
from tests.datapath.conftest import Install
from tests.datapath.support import (
    ANY,
    DENIED_WAIT,
    EGRESS,
    INGRESS,
    TCP,
    Server,
    endpoint,
    exchange,
    rule,
    state,
    tcp_connect,
    tcp_passes,
)
from tests.kernelnode import GATEWAY

pytestmark = pytest.mark.privileged

WAIT = 10.0  # hang guard for what must arrive: returns as soon as it does
C_ID = 16777300  # the outside host's identity (a CIDR identity)


def host(entries: list[PolicyEntry], ingress: bool = True, egress: bool = False, audit: bool = False) -> EndpointPolicy:
    return EndpointPolicy(HOST_ENDPOINT_ID, 1, None, ingress, egress, tuple(sorted(entries, key=lambda e: e.key)), audit=audit)


def apply(inst: Install, rev: int, host_ep: EndpointPolicy, *pods: EndpointPolicy) -> None:
    res = inst.dp.apply(state(rev, [*pods, host_ep], extra_ipcache={f"{inst.node.pods['c'].ip}/32": C_ID}))
    res.raise_for_failures()


@pytest.fixture(scope="module")
def _fw_install() -> Iterator[Install]:
    from tests.datapath.conftest import make_install

    with make_install(attach=("a", "b")) as inst:
        inst.dp.attach_host_devices([inst.node.pods["c"].host_ifname])
        yield inst


@pytest.fixture
def fw(_fw_install: Install) -> Iterator[Install]:
    """One install for the module (its programs compile once); each test
    starts from a node that is not enforced and an empty conntrack."""
    _fw_install.dp.maps.flush_ct()
    yield _fw_install
    apply(_fw_install, 1000, host([], ingress=False, egress=False))
    _fw_install.dp.maps.flush_ct()


def to_node(inst: Install, client, port: int, expect: bool) -> bool:
    """A TCP connection from `client` (a pod) to the node's address, a byte each way."""
    return tcp_passes(client, inst.node, GATEWAY, port, expect, WAIT)


def from_node(inst: Install, server_pod, port: int, expect: bool) -> bool:
    """A TCP connection from the node to a pod (or to c)."""
    return tcp_passes(inst.node, server_pod, server_pod.ip, port, expect, WAIT)


def test_the_nodes_ingress_from_a_device_is_its_host_policy(fw):
    c = fw.node.pods["c"]
    apply(fw, 1, host([rule(C_ID, INGRESS, TCP, 2222)]))
    with fw.dp.events() as stream:
        stream.drain()
        assert to_node(fw, c, 2222, True)
        assert not to_node(fw, c, 2223, False), "a port the host policy does not admit reached the node"
        drops = [e for e in stream.drain() if e.verdict == EventVerdict.DROP]
    assert drops and (drops[0].endpoint_id, drops[0].dport, drops[0].src_identity) == (HOST_ENDPOINT_ID, 2223, C_ID)


def test_without_a_host_policy_the_node_is_not_enforced(fw):
    c = fw.node.pods["c"]
    apply(fw, 1, host([], ingress=False, egress=False))
    assert to_node(fw, c, 2223, True)
    assert from_node(fw, c, 8080, True)


def test_the_nodes_egress_through_a_device_is_its_host_policy_and_replies_pass(fw):
    c = fw.node.pods["c"]
    apply(fw, 1, host([rule(C_ID, EGRESS, TCP, 8080)], ingress=True, egress=True))
    assert from_node(fw, c, 8080, True), "an allowed connection of the node's, or its replies, were dropped"
    assert not from_node(fw, c, 8081, False)


def test_a_pod_reaching_the_node_is_judged_by_the_nodes_ingress_too(fw):
    a, b = fw.ep("a"), fw.ep("b")
    apply(fw, 1, host([rule(a.identity, INGRESS, TCP, 4000)]),
          endpoint(a, [], ingress=False, egress=False), endpoint(b, [], ingress=False, egress=False))
    assert to_node(fw, a.pod, 4000, True)
    assert not to_node(fw, b.pod, 4000, False), "a pod the host policy does not name reached the node"
    assert not to_node(fw, a.pod, 4001, False)


def test_the_node_reaching_a_pod_is_judged_by_its_egress_too(fw):
    a, b = fw.ep("a"), fw.ep("b")
    apply(fw, 1, host([rule(a.identity, EGRESS, TCP, 5000)], ingress=False, egress=True),
          endpoint(a, [], ingress=False, egress=False), endpoint(b, [], ingress=False, egress=False))
    assert from_node(fw, a.pod, 5000, True)
    assert not from_node(fw, b.pod, 5000, False), "the node reached a pod its egress policy does not name"


def test_host_audit_mode_lets_through_and_reports_what_policy_would_drop(fw):
    c = fw.node.pods["c"]
    apply(fw, 1, host([], ingress=True, audit=True))
    with fw.dp.events() as stream:
        stream.drain()
        assert to_node(fw, c, 2224, True)
        audits = [e for e in stream.drain() if e.verdict == EventVerdict.AUDIT]
    assert audits and (audits[0].endpoint_id, audits[0].reason) == (HOST_ENDPOINT_ID, Reason.NO_POLICY_MATCH)
    apply(fw, 2, host([], ingress=True, audit=False))
    assert not to_node(fw, c, 2225, False)


def test_a_connection_the_node_had_before_its_devices_were_firewalled_survives(fresh_install):
    """The operator's session: open before the host firewall came, not
    admitted by the policy that comes with it, still carried afterwards;
    a new connection like it is not."""
    with fresh_install(attach=("a", "b")) as inst:
        c = inst.node.pods["c"]
        with Server(inst.node, 2200) as srv:
            cli = tcp_connect(c, GATEWAY, 2200, WAIT)
            assert cli is not None
            conn = srv.accept(WAIT)
            assert conn is not None
            try:
                exchange(cli, conn)
                adopted = inst.dp.attach_host_devices([c.host_ifname])
                assert adopted >= 1
                apply(inst, 1, host([], ingress=True, egress=True))  # admits nothing at all
                exchange(cli, conn)  # both directions still carried
                late = tcp_connect(c, GATEWAY, 2200, DENIED_WAIT)
                assert late is None and not srv.pending(0.2), "a new connection got past a policy that admits nothing"
            finally:
                cli.close()
                conn.close()


def test_teardown_removes_the_device_programs_and_the_node_is_open_again(fresh_install):
    with fresh_install(attach=("a",)) as inst:
        c = inst.node.pods["c"]
        inst.dp.attach_host_devices([c.host_ifname])
        apply(inst, 1, host([], ingress=True))
        assert not to_node(inst, c, 2226, False)
        inst.dp.teardown()
        assert to_node(inst, c, 2226, True), "the node stayed firewalled after teardown"


def _tcp6(src_ns: str | None, dst: str, port: int, server_ns: str | None, expect: bool) -> bool:
    """A TCP connection over IPv6 from netns src_ns to dst:port, served in
    server_ns on [::]:port; True if the server's socket saw it."""
    import select

    from tests.kernelnode import in_netns

    with in_netns(server_ns):
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with in_netns(src_ns):
        cli = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("::", port))
        srv.listen(4)
        cli.settimeout(WAIT if expect else DENIED_WAIT)
        try:
            cli.connect((dst, port))
        except OSError:
            pass
        return bool(select.select([srv], [], [], WAIT if expect else 0.2)[0])
    finally:
        srv.close()
        cli.close()


def test_the_nodes_ipv6_is_judged_by_the_same_host_policy(fresh_install):
    from tests.datapath.support import NODE6
    from tests.kernelnode import wire_ipv6

    with fresh_install(attach=("a",)) as inst:
        c = inst.node.pods["c"]
        wire_ipv6(inst.node.netns, c, "fd00:201::9", str(NODE6))
        inst.dp.attach_host_devices([c.host_ifname])
        res = inst.dp.apply(state(1, [host([rule(C_ID, INGRESS, TCP, 2222), rule(C_ID, EGRESS, TCP, 8080)], egress=True)],
                                  extra_ipcache={"fd00:201::9/128": C_ID}))
        res.raise_for_failures()
        assert _tcp6(c.netns, str(NODE6), 2222, inst.node.netns, True)
        assert not _tcp6(c.netns, str(NODE6), 2223, inst.node.netns, False), "an IPv6 port the host policy does not admit reached the node"
        assert _tcp6(inst.node.netns, "fd00:201::9", 8080, c.netns, True)
        assert not _tcp6(inst.node.netns, "fd00:201::9", 8081, c.netns, False)


def test_between_a_pod_and_the_node_both_sides_policies_hold(fw):
    """Pod -> node: the node's ingress admits a, a's own egress does not
    (nothing for host). Node -> pod: the node's egress admits b, b's own
    ingress does not. Each side's policy alone drops the flow."""
    a, b = fw.ep("a"), fw.ep("b")
    apply(fw, 1, host([rule(a.identity, INGRESS, TCP, 4000), rule(b.identity, EGRESS, TCP, 5000)], egress=True),
          endpoint(a, [rule(257, EGRESS, ANY)], ingress=False, egress=True),
          endpoint(b, [rule(256, INGRESS, ANY)], ingress=True, egress=False))
    assert not to_node(fw, a.pod, 4000, False), "a's egress admits nothing for the node, yet a reached it"
    assert not from_node(fw, b.pod, 5000, False), "b's ingress does not admit the node, yet the node reached b"
    apply(fw, 2, host([rule(a.identity, INGRESS, TCP, 4000), rule(b.identity, EGRESS, TCP, 5000)], egress=True),
          endpoint(a, [rule(1, EGRESS, TCP, 4000)], ingress=False, egress=True),
          endpoint(b, [rule(1, INGRESS, TCP, 5000)], ingress=True, egress=False))
    assert to_node(fw, a.pod, 4000, True) and from_node(fw, b.pod, 5000, True)
