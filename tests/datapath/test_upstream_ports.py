"""The connect hook that gives the proxy's client-address upstreams their
source port (bpf/bpf_sock.c, redirect/upstream_ports.py), in the kernel.

Sockets are made the way Envoy's original_src filter makes them (SO_MARK
0x0B00, IP_TRANSPARENT, IP_BIND_ADDRESS_NO_PORT, bound to an address) in the
install's node namespace; the node's own ip_local_port_range is left at
Linux's default, which the range must not depend on.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator

import pytest

from redirect import loader
from redirect.upstream_ports import PortRange
from tests.kernelnode import in_netns

pytestmark = pytest.mark.privileged

IP_TRANSPARENT, IP_BIND_ADDRESS_NO_PORT = 19, 24
RANGE = PortRange(61000, 61255)


def _upstream(netns: str | None, mark: int = 0x0B00) -> socket.socket:
    with in_netns(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.bind(("127.0.0.1", 0))
    return s


@contextlib.contextmanager
def _server(netns: str | None, port: int = 0) -> Iterator[socket.socket]:
    with in_netns(netns):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1" if port == 0 else "0.0.0.0", port))
    srv.listen(1024)
    try:
        yield srv
    finally:
        srv.close()


def _source_port(netns: str | None, dst: tuple[str, int], mark: int = 0x0B00) -> tuple[socket.socket, int]:
    s = _upstream(netns, mark)
    s.connect(dst)
    return s, s.getsockname()[1]


def test_marked_upstreams_of_the_node_take_ports_from_the_range_and_nothing_else_does(fresh_install) -> None:
    with fresh_install(attach=()) as inst, contextlib.ExitStack() as held:
        inst.dp.choose_upstream_ports(RANGE)
        ns = inst.node.netns
        srv = held.enter_context(_server(ns))
        dst = srv.getsockname()
        upstream = []
        for _ in range(20):
            s, port = _source_port(ns, dst)
            held.callback(s.close)
            upstream.append(port)
        plain, plain_port = _source_port(ns, dst, mark=0)
        held.callback(plain.close)
        # The same socket in another namespace (a pod's) is not the node's.
        pod_ns = inst.node.pods["a"].netns
        pod_srv = held.enter_context(_server(pod_ns))
        other, other_port = _source_port(pod_ns, pod_srv.getsockname())
        held.callback(other.close)

        assert all(RANGE.lo <= p <= RANGE.hi for p in upstream), upstream
        assert len(set(upstream)) == len(upstream)
        assert not RANGE.lo <= plain_port <= RANGE.hi, plain_port
        assert not RANGE.lo <= other_port <= RANGE.hi, other_port
        assert inst.dp.upstream_port_stats().assigned == len(upstream)


def test_taken_ports_are_skipped_and_a_full_range_refuses_the_connect(fresh_install) -> None:
    small = PortRange(61000, 61099)  # 100 ports; the CLI asks for 256, the program for 65
    with fresh_install(attach=()) as inst, contextlib.ExitStack() as held:
        inst.dp.choose_upstream_ports(small)
        ns = inst.node.netns
        srv = held.enter_context(_server(ns))
        dst = srv.getsockname()
        # A node service listening on a quarter of the range.
        for port in range(small.lo, small.lo + 25):
            held.enter_context(_server(ns, port))
        ports: list[int] = []
        refused = None
        for _ in range(small.size):
            try:
                s, port = _source_port(ns, dst)
            except OSError as e:
                refused = e
                break
            held.callback(s.close)
            ports.append(port)

        assert len(set(ports)) == len(ports), "two upstreams to one server shared a 4-tuple"
        assert all(small.lo + 25 <= p <= small.hi for p in ports), sorted(ports)
        assert refused is not None and refused.errno == errno.EPERM, refused
        assert len(ports) >= 60, f"refused with only {len(ports)} of 75 free ports taken"
        stats = inst.dp.upstream_port_stats()
        assert stats.assigned == len(ports) and stats.exhausted == 1 and stats.busy > 0, stats
        # Another server: the same ports again, a 4-tuple apart.
        with _server(ns) as srv2:
            s2, port2 = _source_port(ns, srv2.getsockname())
            s2.close()
        assert small.lo + 25 <= port2 <= small.hi


def test_a_restart_adopts_the_hook_and_teardown_removes_it(fresh_install) -> None:
    from redirect.datapath import Datapath

    with fresh_install(attach=()) as inst, contextlib.ExitStack() as held:
        ns = inst.node.netns
        inst.dp.choose_upstream_ports(RANGE)
        inst.dp.close()
        compiled = loader.compile_count()
        inst.dp = Datapath(inst.pin_dir, inst.state_dir, netns=ns)  # the restarted agent's
        inst.dp.choose_upstream_ports(RANGE)
        assert loader.compile_count() == compiled, "an unchanged hook was compiled again"
        srv = held.enter_context(_server(ns))
        s, port = _source_port(ns, srv.getsockname())
        s.close()
        assert RANGE.lo <= port <= RANGE.hi

        # A new range takes effect without a new program.
        inst.dp.choose_upstream_ports(PortRange(62000, 62255))
        s, port = _source_port(ns, srv.getsockname())
        s.close()
        assert 62000 <= port <= 62255 and loader.compile_count() == compiled

        inst.dp.teardown()
        s, port = _source_port(ns, srv.getsockname())
        s.close()
        assert not 61000 <= port <= 62255, f"port {port}: the hook outlived teardown"
        inst.dp = Datapath(inst.pin_dir, inst.state_dir, netns=ns)  # for the fixture's own teardown


def test_ipv6_upstreams_take_ports_from_the_range_too(fresh_install) -> None:
    """The connect6 twin: an upstream bound to an IPv6 client address (as
    original_src binds it for an IPv6 flow) gets its port from the range."""
    with fresh_install(attach=()) as inst:
        ns = inst.node.netns
        inst.dp.choose_upstream_ports(RANGE)
        with in_netns(ns):
            srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        held: list[socket.socket] = [srv]
        try:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("::1", 0))
            srv.listen(64)

            def connect(mark: int) -> int:
                with in_netns(ns):
                    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                held.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
                s.setsockopt(socket.IPPROTO_IPV6, 75, 1)  # IPV6_TRANSPARENT
                s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind(("::1", 0))
                s.connect(srv.getsockname()[:2])
                return s.getsockname()[1]

            ports = [connect(0x0B00) for _ in range(20)]
            assert all(RANGE.lo <= p <= RANGE.hi for p in ports), ports
            assert len(set(ports)) == len(ports)
            assert not RANGE.lo <= connect(0) <= RANGE.hi  # unmarked: the kernel's choice
            assert inst.dp.upstream_port_stats().assigned >= 20
            inst.dp.teardown()
            assert not RANGE.lo <= connect(0x0B00) <= RANGE.hi, "the IPv6 hook outlived teardown"
        finally:
            for s in held:
                s.close()
            from redirect.datapath import Datapath

            inst.dp = Datapath(inst.pin_dir, inst.state_dir, netns=ns)  # for the fixture's own teardown
