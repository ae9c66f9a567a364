"""Helpers for the datapath kernel tests: hand-built compiled states (the
compiler is not needed to drive the datapath) and socket probes run inside
pod network namespaces. Does socket I/O only."""

from __future__ import annotations

import select
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Iterable

from policy.compiled import (
    ALL_PORTS,
    CompiledState,
    Direction,
    EndpointPolicy,
    PolicyEntry,
    PolicyKey,
    PortRange,
    Protocol,
    Verdict,
)
from tests.kernelnode import GATEWAY, Pod, in_netns

ALLOWED_WAIT = 2.0  # an allowed connect on a veth takes well under 1 ms
DENIED_WAIT = 0.4  # how long a denied connect is given to (not) arrive

EGRESS, INGRESS = Direction.EGRESS, Direction.INGRESS
TCP, UDP, ANY = Protocol.TCP, Protocol.UDP, Protocol.ANY


def rule(identity: int, direction: Direction, protocol: Protocol = TCP, ports: PortRange | tuple[int, int] | int = ALL_PORTS,
         verdict: Verdict = Verdict.ALLOW, proxy_port: int = 0) -> PolicyEntry:
    if isinstance(ports, int):
        ports = PortRange(ports, ports)
    elif isinstance(ports, tuple):
        ports = PortRange(*ports)
    return PolicyEntry(PolicyKey(identity, direction, protocol, ports), verdict, proxy_port)


@dataclass(frozen=True)
class Ep:
    endpoint_id: int
    identity: int
    pod: Pod


def endpoint(ep: Ep, entries: Iterable[PolicyEntry] = (), ingress: bool = True, egress: bool = True,
             ipv6: IPv6Address | None = None) -> EndpointPolicy:
    return EndpointPolicy(ep.endpoint_id, ep.identity, ep.pod.ip, ingress, egress,
                          tuple(sorted(entries, key=lambda e: e.key)), ipv6=ipv6)


NODE6 = IPv6Address("fd00:201::fffe")  # the node's IPv6 toward its pods (tests that wire IPv6)


def state(revision: int, endpoints: Iterable[EndpointPolicy], extra_ipcache: dict[str, int] | None = None,
          all_ips: dict[IPv4Address, int] | None = None) -> CompiledState:
    """The compiled state a dual-stack node would have: world and host for
    each family, every endpoint's /32 and /128, and `extra_ipcache`
    (prefixes of either family)."""
    eps = {e.endpoint_id: e for e in endpoints}
    ipc: dict[IPv4Network | IPv6Network, int] = {
        IPv4Network("0.0.0.0/0"): 2, IPv4Network(f"{GATEWAY}/32"): 1, IPv6Network("::/0"): 2, IPv6Network(f"{NODE6}/128"): 1,
    }
    for ip, ident in (all_ips or {}).items():
        ipc[IPv4Network(f"{ip}/32")] = ident
    for e in eps.values():
        if e.ipv4 is not None:
            ipc[IPv4Network(f"{e.ipv4}/32")] = e.identity
        if e.ipv6 is not None:
            ipc[IPv6Network(f"{e.ipv6}/128")] = e.identity
    for net, ident in (extra_ipcache or {}).items():
        ipc[IPv4Network(net) if ":" not in net else IPv6Network(net)] = ident
    return CompiledState(revision, eps, ipc)


class Server:
    """A TCP or UDP server socket in a pod; records what it receives."""

    def __init__(self, pod: Pod, port: int, kind: int = socket.SOCK_STREAM) -> None:
        self.sock = pod.socket(kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
        if kind == socket.SOCK_STREAM:
            self.sock.listen(16)
        self.port = port

    def pending(self, wait: float = 0.0) -> bool:
        r, _, _ = select.select([self.sock], [], [], wait)
        return bool(r)

    def accept(self, wait: float = ALLOWED_WAIT) -> socket.socket | None:
        if not self.pending(wait):
            return None
        conn, _ = self.sock.accept()
        conn.settimeout(ALLOWED_WAIT)
        return conn

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tcp_connect(client: Pod, dst: IPv4Address, port: int, wait: float) -> socket.socket | None:
    """Connected socket, or None when the handshake did not complete."""
    s = client.socket(socket.SOCK_STREAM)
    s.settimeout(wait)
    try:
        s.connect((str(dst), port))
    except (TimeoutError, socket.timeout, ConnectionRefusedError, OSError):
        s.close()
        return None
    s.settimeout(ALLOWED_WAIT)
    return s


def exchange(client: socket.socket, server: socket.socket) -> None:
    """A byte each way on a connection: both directions carried."""
    client.sendall(b"q")
    assert server.recv(1) == b"q"
    server.sendall(b"r")
    assert client.recv(1) == b"r"


def tcp_flow_passes(client: Pod, server: Pod, port: int, expect: bool) -> bool:
    """Open a TCP connection and exchange a byte each way; True if the server
    saw the connection. When `expect` is False, wait only DENIED_WAIT."""
    return tcp_passes(client, server, server.ip, port, expect)


def tcp_passes(client, server, dst, port: int, expect: bool, wait: float = ALLOWED_WAIT) -> bool:
    """tcp_flow_passes between any two places with sockets (a pod, the node)
    to the address `dst` of the server's; `wait` bounds what must arrive."""
    with Server(server, port) as srv:
        c = tcp_connect(client, dst, port, wait if expect else DENIED_WAIT)
        conn = srv.accept(0.2 if c is None else wait)
        try:
            if c is None or conn is None:
                return False
            exchange(c, conn)
            return True
        finally:
            for s in (c, conn):
                if s is not None:
                    s.close()


def udp_roundtrip(client: Pod, server: Pod, port: int, expect: bool) -> tuple[bool, bool]:
    """(server got the datagram, client got the reply)."""
    with Server(server, port, socket.SOCK_DGRAM) as srv:
        c = client.socket(socket.SOCK_DGRAM)
        try:
            c.sendto(b"ping", (str(server.ip), port))
            if not srv.pending(ALLOWED_WAIT if expect else DENIED_WAIT):
                return (False, False)
            data, addr = srv.sock.recvfrom(100)
            srv.sock.sendto(b"pong:" + data, addr)
            r, _, _ = select.select([c], [], [], ALLOWED_WAIT)
            return (True, bool(r) and c.recv(100) == b"pong:ping")
        finally:
            c.close()


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_syn(src: IPv4Address, dst: IPv4Address, sport: int, dport: int) -> bytes:
    """A bare TCP SYN header (no options) with its checksum; the kernel adds
    the IP header."""
    head = struct.pack("!HHIIBBHHH", sport, dport, sport * 7919, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(head))
    return head[:16] + struct.pack("!H", _csum(pseudo + head)) + head[18:]


def syn_flood(pod: Pod, dst: IPv4Address, dport: int, sports: Iterable[int]) -> int:
    """Send one raw SYN from `pod` to dst:dport per source port, as a pod with
    CAP_NET_RAW (every container's default) can: no connection, no retries,
    nothing waits for an answer. Returns how many were sent."""
    with in_netns(pod.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sent = 0
    try:
        for sport in sports:
            s.sendto(tcp_syn(pod.ip, dst, sport, dport), (str(dst), 0))
            sent += 1
    finally:
        s.close()
    return sent
