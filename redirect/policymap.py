"""Policy entries as the kernel stores them, and the safe order to change them.

Pure (no I/O). Owns:
- the port-range representation: the policy map is an LPM trie whose key is
  {identity, direction, protocol} matched in full, then the destination port
  (network byte order) matched by prefix. A range lo-hi is stored as the
  minimal set of aligned power-of-two blocks covering it (80-90 becomes
  80/13 (80-87), 88/15 (88-89) and 90/16), each block
  carrying the entry's verdict. The compiler guarantees disjoint ranges per
  (identity, direction, protocol), so blocks never collide and the longest
  match within one probe is the one entry containing the port.
- encoding to and decoding from the bytes of bpf/lib/layout.h.
- `kernel_lookup`, a model of the C lookup used to prove equivalence with
  policy.compiled.lookup and the update ordering (tests).
- `plan_update`: the order of map writes that never opens a window in which a
  flow denied by both the old and the new state gets through.
"""

from __future__ import annotations

import ctypes
import enum
import struct
from dataclasses import dataclass
from typing import Iterable, Mapping

from policy.compiled import (
    IDENTITY_ANY,
    Direction,
    EndpointPolicy,
    PortRange,
    Protocol,
    Verdict,
    probe_ports,
    protocol_name,
)
from redirect import layout

KEY_SIZE = ctypes.sizeof(layout.PolicyKey)
VALUE_SIZE = ctypes.sizeof(layout.PolicyValue)


@dataclass(frozen=True, slots=True, order=True)
class KernelKey:
    identity: int
    direction: Direction
    protocol: int
    port: int  # first port of the block
    plen: int  # 0..16 bits of the port that must match

    @property
    def ports(self) -> PortRange:
        return PortRange(self.port, self.port | ((1 << (16 - self.plen)) - 1))


@dataclass(frozen=True, slots=True)
class KernelValue:
    verdict: Verdict
    proxy_port: int = 0


@dataclass(frozen=True, slots=True)
class DecodedEntry:
    """One kernel policy entry, for `ciliate bpf policy get`."""

    identity: int
    direction: Direction
    protocol: Protocol | int
    ports: PortRange
    verdict: Verdict
    proxy_port: int

    def __str__(self) -> str:
        d = self.direction.name.lower()
        proto = self.protocol.name if isinstance(self.protocol, Protocol) else str(self.protocol)
        tail = f" -> proxy {self.proxy_port}" if self.verdict == Verdict.REDIRECT else ""
        return f"{d:7} identity={self.identity:<8} {proto:4} port={self.ports!s:11} {self.verdict.name}{tail}"


def port_blocks(r: PortRange) -> list[tuple[int, int]]:
    """Aligned (start, prefix length) blocks exactly covering lo..hi."""
    out: list[tuple[int, int]] = []
    lo, hi = r.lo, r.hi
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while lo + size - 1 > hi:
            size >>= 1
        out.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return out


def render(ep: EndpointPolicy) -> dict[KernelKey, KernelValue]:
    """The kernel entries of one endpoint's compiled policy. Raises
    ValueError when two ranges of one (identity, direction, protocol)
    overlap, which the compiler promises never to produce."""
    groups: dict[tuple[int, int, int], list[PortRange]] = {}
    for e in ep.entries:
        groups.setdefault((e.key.identity, int(e.key.direction), int(e.key.protocol)), []).append(e.key.ports)
    for (ident, d, proto), rs in groups.items():
        rs.sort()
        for prev, cur in zip(rs, rs[1:]):
            if cur.lo <= prev.hi:
                raise ValueError(
                    f"endpoint {ep.endpoint_id}: overlapping port ranges for identity {ident} "
                    f"{Direction(d).name} {_proto_name(proto)}: {prev} and {cur}"
                )
    out: dict[KernelKey, KernelValue] = {}
    for e in ep.entries:
        k = e.key
        value = KernelValue(e.verdict, e.proxy_port if e.verdict == Verdict.REDIRECT else 0)
        for port, plen in port_blocks(k.ports):
            out[KernelKey(k.identity, Direction(k.direction), int(k.protocol), port, plen)] = value
    return out


def _proto_name(p: int) -> str:
    return protocol_name(p)


def encode_key(k: KernelKey) -> bytes:
    return struct.pack(
        "=IIBB2s",
        layout.POLICY_FIXED_BITS + k.plen,
        k.identity,
        int(k.direction),
        k.protocol,
        struct.pack("!H", k.port),
    )


def encode_value(v: KernelValue) -> bytes:
    return struct.pack("=HBB", v.proxy_port, int(v.verdict), 0)


def decode_key(raw: bytes) -> KernelKey:
    prefixlen, identity, direction, protocol, port = struct.unpack("=IIBB2s", raw[:KEY_SIZE])
    return KernelKey(identity, Direction(direction), protocol, struct.unpack("!H", port)[0],
                     prefixlen - layout.POLICY_FIXED_BITS)


def decode_value(raw: bytes) -> KernelValue:
    proxy_port, verdict, _ = struct.unpack("=HBB", raw[:VALUE_SIZE])
    return KernelValue(Verdict(verdict), proxy_port)


def describe(k: KernelKey, v: KernelValue) -> DecodedEntry:
    try:
        proto: Protocol | int = Protocol(k.protocol)
    except ValueError:
        proto = k.protocol
    return DecodedEntry(k.identity, k.direction, proto, k.ports, v.verdict, v.proxy_port)


def merge_ranges(entries: list[DecodedEntry]) -> list[DecodedEntry]:
    """Join adjacent port blocks of the same (identity, direction, protocol,
    verdict, proxy port) into one range, for display."""
    out: list[DecodedEntry] = []
    for e in sorted(entries, key=lambda e: (e.direction, e.identity, int(e.protocol), e.ports.lo)):
        last = out[-1] if out else None
        if (
            last is not None
            and (last.direction, last.identity, int(last.protocol), last.verdict, last.proxy_port)
            == (e.direction, e.identity, int(e.protocol), e.verdict, e.proxy_port)
            and last.ports.hi + 1 == e.ports.lo
        ):
            out[-1] = DecodedEntry(e.identity, e.direction, e.protocol, PortRange(last.ports.lo, e.ports.hi),
                                   e.verdict, e.proxy_port)
        else:
            out.append(e)
    return out


def kernel_lookup(
    entries: Mapping[KernelKey, KernelValue],
    enforced: bool,
    peer: int,
    direction: Direction,
    protocol: int,
    port: int,
) -> tuple[bool, Verdict | None, int]:
    """Model of bpf/lib/policy.h: (allowed, strongest verdict, proxy port)."""
    own, any_ = probe_ports(protocol, port)
    best: KernelValue | None = None
    for ident, proto, at in ((peer, protocol, own), (peer, Protocol.ANY, any_), (IDENTITY_ANY, protocol, own), (IDENTITY_ANY, Protocol.ANY, any_)):
        hit: tuple[int, KernelValue] | None = None
        for k, v in entries.items():
            if k.identity != ident or k.direction != direction or k.protocol != proto:
                continue
            if at is None:
                if k.plen == 0 and (hit is None or 0 > hit[0]):
                    hit = (0, v)
                continue
            if k.ports.contains(at) and (hit is None or k.plen > hit[0]):
                hit = (k.plen, v)
        if hit is not None and (best is None or hit[1].verdict > best.verdict):
            best = hit[1]
    if best is None:
        return (not enforced, None, 0)
    if best.verdict == Verdict.DENY:
        return (False, Verdict.DENY, 0)
    return (True, best.verdict, best.proxy_port)


class OpKind(enum.Enum):
    WRITE = "write"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    key: KernelKey
    value: KernelValue | None = None


def plan_update(old: Mapping[KernelKey, KernelValue], new: Mapping[KernelKey, KernelValue]) -> list[Op]:
    """Writes and deletes turning `old` into `new`, in a safe order.

    1. write every new DENY entry (new keys and keys whose value becomes DENY)
    2. delete old non-DENY entries the new state lacks
    3. write the remaining new or changed entries (ALLOW, REDIRECT)
    4. delete old DENY entries the new state lacks

    Why it is safe: the verdict is the maximum over four longest-prefix probes.
    Adding a DENY or removing a non-DENY entry can only make a verdict
    stricter, so phases 1-2 keep every old denial. From phase 3 on, every key
    present is a new key or an old DENY key, and every new DENY is present:
    a probe that finds a new DENY in the new state finds it (or a longer old
    DENY) now. So a flow both states deny is denied at every step; a flow only
    one of them denies may pass or not in between. (Enforcement flags are
    ordered around this by the caller: turned on before, off after.)
    """
    first, second = plan_phases(old, new)
    return first + second


def plan_phases(
    old: Mapping[KernelKey, KernelValue], new: Mapping[KernelKey, KernelValue]
) -> tuple[list[Op], list[Op]]:
    """plan_update split in two: (phases 1-2, phases 3-4). Between the two
    halves the map is at least as strict as both states."""
    first: list[Op] = []
    second: list[Op] = []
    for k, v in new.items():
        if v.verdict == Verdict.DENY and old.get(k) != v:
            first.append(Op(OpKind.WRITE, k, v))
    for k, v in old.items():
        if v.verdict != Verdict.DENY and k not in new:
            first.append(Op(OpKind.DELETE, k))
    for k, v in new.items():
        if v.verdict != Verdict.DENY and old.get(k) != v:
            second.append(Op(OpKind.WRITE, k, v))
    for k, v in old.items():
        if v.verdict == Verdict.DENY and k not in new:
            second.append(Op(OpKind.DELETE, k))
    return first, second


def apply_ops(state: dict[KernelKey, KernelValue], ops: Iterable[Op]) -> Iterable[dict[KernelKey, KernelValue]]:
    """Replay ops on a dict, yielding each intermediate state (for tests)."""
    for op in ops:
        if op.kind is OpKind.WRITE:
            assert op.value is not None
            state[op.key] = op.value
        else:
            state.pop(op.key, None)
        yield state
