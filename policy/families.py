"""IP families: which ones the node runs (its stack), and what that makes of
the world. One home for the family rules the ipcache, the selector cache,
trace and diff share. Pure.

The rules are Cilium's (its labels/cidr.go, policy/api/entity.go and the
agent's ipcache set-up), restated:

- Single-stack (the node runs one family): that family's default route
  (0.0.0.0/0 or ::/0) carries `world` (2), and CIDR identities carry the
  label `reserved:world`.
- Dual-stack: 0.0.0.0/0 carries `world-ipv4` (9) and ::/0 `world-ipv6` (10);
  CIDR identities carry `reserved:world-ipv4` or `reserved:world-ipv6` by
  their family. `world` (2) is then on no address; the kernel answers it for
  an address no prefix covers, which cannot happen once both default routes
  are in the ipcache.
- The `world` entity selects world, world-ipv4 and world-ipv6 and every
  CIDR identity, whatever the stack; `world-ipvN` selects that family's part.

One deliberate difference, in single-stack only: there Cilium labels every
CIDR identity `reserved:world`, so its `world-ipv4` selector selects nothing
any packet carries (and an `egressDeny: toEntities: [world-ipv4]` denies
nothing), and a `::/0` CIDR selector (labelled `reserved:world`) selects the
IPv4 world too. Here `world-ipvN` and a CIDR peer select by the family the
policy names: on an IPv4-only node `world-ipv4` is the IPv4 world (what
`world` is there, as Cilium's issue 27494 describes the sub-identities), and
a rule naming IPv6 never opens IPv4.

The datapath enforces both families, so the agent compiles with Stack.DUAL;
`policy trace`/`diff --stack` ask about single-stack nodes.
"""

from __future__ import annotations

import enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from policy.identity import IDENTITY_WORLD, IDENTITY_WORLD_IPV4, IDENTITY_WORLD_IPV6

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

DEFAULT_ROUTES: dict[int, IPNetwork] = {4: IPv4Network("0.0.0.0/0"), 6: IPv6Network("::/0")}
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}

# The world entities and the family each is about (None: both).
WORLD_ENTITIES: dict[str, int | None] = {"world": None, "world-ipv4": 4, "world-ipv6": 6}
_FAMILY_WORLD = {4: IDENTITY_WORLD_IPV4, 6: IDENTITY_WORLD_IPV6}


class Stack(enum.Enum):
    """The address families the node's datapath carries."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DUAL = "dual"

    @property
    def families(self) -> frozenset[int]:
        return frozenset({4, 6}) if self is Stack.DUAL else frozenset({4 if self is Stack.IPV4 else 6})

    def runs(self, version: int) -> bool:
        return version in self.families

    def world_identity(self, version: int) -> int | None:
        """The identity of the family's default route; None for a family the node does not run."""
        if not self.runs(version):
            return None
        return _FAMILY_WORLD[version] if self is Stack.DUAL else IDENTITY_WORLD

    def world_label(self, version: int) -> str:
        """The world label a CIDR identity of this family carries."""
        if self is Stack.DUAL:
            return f"reserved:world-ipv{version}"
        return "reserved:world"

    def default_routes(self) -> dict[IPNetwork, int]:
        """The ipcache's default routes: each family the node runs -> its world identity."""
        return {DEFAULT_ROUTES[v]: _FAMILY_WORLD[v] if self is Stack.DUAL else IDENTITY_WORLD for v in sorted(self.families)}

    def world_of(self, version: int | None) -> frozenset[int]:
        """The reserved identities the world of one family (None: of both) is
        on. `world` (2) is part of the whole world in every stack, as the
        kernel's answer for an address nothing covers."""
        if version is None:
            out = {IDENTITY_WORLD}
            for v in self.families:
                out |= self.world_of(v)
            return frozenset(out)
        ident = self.world_identity(version)
        return frozenset() if ident is None else frozenset({ident})

    def unused_world(self) -> frozenset[int]:
        """World identities no address carries in this stack."""
        used = {self.world_identity(v) for v in self.families}
        return frozenset({IDENTITY_WORLD, IDENTITY_WORLD_IPV4, IDENTITY_WORLD_IPV6} - used)


def host_net(addr: IPAddress) -> IPNetwork:
    """The /32 or /128 of an address."""
    return IPv4Network(addr) if addr.version == 4 else IPv6Network(addr)


def net_key(net: IPNetwork) -> tuple[int, int, int]:
    """(family, network address, prefix length): one key per prefix across
    both families (0.0.0.0/0 and ::/0 share an address and a length)."""
    return (net.version, int(net.network_address), net.prefixlen)


def within(net: IPNetwork, outer: IPNetwork) -> bool:
    """net is inside outer (ipaddress.subnet_of without its overhead, and
    False rather than TypeError across families)."""
    if net.version != outer.version or net.prefixlen < outer.prefixlen:
        return False
    shift = outer.max_prefixlen - outer.prefixlen
    return int(net.network_address) >> shift == int(outer.network_address) >> shift
