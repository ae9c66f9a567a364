"""The map writer: desired (compiled state) vs realized (read back from the
kernel maps), applied in an order that never lets through a flow that both
the old and the new state deny. Does I/O through PinnedMaps.

Order of one apply (each step idempotent, so a crash mid-way is repaired by
the next apply, which re-reads the kernel):

  0. lxc: enforcement flags become old OR new (an endpoint that becomes
     enforced is so before anything else changes), the audit flag old AND
     new (audit ends first, starts last); new endpoints appear.
  1. per endpoint, policy phases 1-2 of policymap.plan_update: new DENY
     entries written, dropped non-DENY entries deleted. The map now denies
     whatever the old or the new policy denies, for either identity.
  2. ipcache and endpoint identities: writes before deletes, so every
     address resolves to its old or its new identity at all times.
  3. per endpoint, policy phases 3-4: new allows/redirects, then stale denies.
  4. lxc: final flags; endpoints gone from the state are removed.

A flow denied before and after is denied at every step in between (see
policymap.plan_update for the per-map argument; step 1's map is at least as
strict as both states under either identity, which covers step 2).

An endpoint whose entries exceed its map's capacity is skipped whole: its
old entries, flags and identity stay enforced and the result carries a
MapFullError for it. An ipcache that would overflow fails the whole apply
before anything is written.

Both families: an IPv6 prefix goes into ciliate_ipcache6, an endpoint's
IPv6 address into ciliate_lxc6 with the same value as its IPv4 one, and the
steps above treat them alike. The host endpoint (host policies) has an lxc
entry for every address of the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable
from ipaddress import IPv4Address, IPv6Address, ip_network

from policy.compiled import HOST_ENDPOINT_ID, CompiledState, EndpointPolicy
from redirect import bpfsys, layout, policymap
from redirect.errors import DatapathError, MapFullError
from redirect.maps import PinnedMaps


@dataclass
class ApplyResult:
    revision: int
    written: int = 0
    deleted: int = 0
    ipcache_written: int = 0
    ipcache_deleted: int = 0
    applied: set[int] = field(default_factory=set)  # endpoint ids now enforcing this revision
    failed: dict[int, DatapathError] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_for_failures(self) -> None:
        if self.failed:
            raise next(iter(self.failed.values()))


def _flags(ep: EndpointPolicy) -> int:
    return (
        (layout.LXC_F_INGRESS_ENFORCED if ep.ingress_enforced else 0)
        | (layout.LXC_F_EGRESS_ENFORCED if ep.egress_enforced else 0)
        | (layout.LXC_F_AUDIT if ep.audit else 0)
    )


def _transition(old: int, new: int) -> int:
    # While the policy changes, the stricter of both: enforcement on if either
    # says so, audit (which lets would-be drops through) only if both do.
    audit = old & new & layout.LXC_F_AUDIT
    return ((old | new) & ~layout.LXC_F_AUDIT) | audit


def _addrs(state: CompiledState, ep: EndpointPolicy) -> list[IPv4Address | IPv6Address]:
    """The addresses an endpoint's lxc entries are keyed by: a pod's own,
    or every address of the node for the host endpoint."""
    if ep.endpoint_id == HOST_ENDPOINT_ID:
        return list(state.host_addresses)
    return [a for a in (ep.ipv4, ep.ipv6) if a is not None]


def _run(fd: int, ops: list[policymap.Op], res: ApplyResult, after_write: Callable[[], None] | None) -> None:
    for op in ops:
        if op.kind is policymap.OpKind.WRITE:
            assert op.value is not None
            bpfsys.update(fd, policymap.encode_key(op.key), policymap.encode_value(op.value))
            res.written += 1
        else:
            bpfsys.delete(fd, policymap.encode_key(op.key))
            res.deleted += 1
        if after_write is not None:
            after_write()


def apply_state(
    maps: PinnedMaps,
    state: CompiledState,
    keep: set[int] = frozenset(),
    after_write: Callable[[], None] | None = None,
    *,
    ipcache_changes: frozenset | None = None,
    unchanged: frozenset[int] = frozenset(),
) -> ApplyResult:
    """Reconcile the kernel maps with `state`. `keep`: endpoint ids that are
    attached but not in the state yet (left alone instead of removed).
    `after_write` runs after every policy map write (tests widen the gaps
    between writes with it to prove no window opens).

    What the caller knows the kernel already holds, so that a cluster event
    costs what it changes and not a read of every map: `ipcache_changes`,
    the only prefixes whose entry may differ from the ipcache map (None:
    read it whole and compare); `unchanged`, endpoints whose policy map
    holds exactly their entries in `state` (not read nor rendered)."""
    res = ApplyResult(state.revision)
    cap = maps.sizes.policy_entries

    if len(state.ipcache) > maps.sizes.ipcache:
        raise MapFullError("ipcache", len(state.ipcache), maps.sizes.ipcache)

    # Desired per endpoint; refuse the ones that do not fit.
    desired: dict[int, dict[policymap.KernelKey, policymap.KernelValue] | None] = {}  # None: as the kernel holds
    for ep_id, ep in state.endpoints.items():
        if ep_id in unchanged and maps.policy_fd(ep_id, create=False) is not None:
            desired[ep_id] = None
            continue
        try:
            d = policymap.render(ep)
        except ValueError as e:
            res.failed[ep_id] = DatapathError(str(e))
            continue
        if len(d) > cap:
            res.failed[ep_id] = MapFullError("policy map", len(d), cap, ep_id)
            continue
        desired[ep_id] = d

    lxc_now = maps.read_lxc()
    by_id = {v[0]: (ip, v) for ip, v in lxc_now.items()}
    ok_eps = {i: state.endpoints[i] for i in desired}

    # 0. enforcement on first; new endpoints appear (keeping old identities).
    # An endpoint's entries (one per family) carry the same flags throughout.
    flags0: dict[int, int] = {}
    for ep_id, ep in ok_eps.items():
        prev = by_id.get(ep_id)
        flags0[ep_id] = _transition(prev[1][2], _flags(ep)) if prev else _flags(ep)
        for addr in _addrs(state, ep):
            old = lxc_now.get(addr)
            if old is None or old[0] != ep_id:
                maps.write_lxc(addr, ep_id, ep.identity, flags0[ep_id])
            else:
                maps.write_lxc(addr, ep_id, old[1], flags0[ep_id])

    # 1. policy: new denies in, dropped allows/redirects out.
    plans: dict[int, tuple[int, list[policymap.Op]]] = {}
    for ep_id, d in desired.items():
        fd = maps.policy_fd(ep_id)
        assert fd is not None
        if d is None:
            plans[ep_id] = (fd, [])
            continue
        first, second = policymap.plan_phases(maps.read_policy(ep_id), d)
        _run(fd, first, res, after_write)
        plans[ep_id] = (fd, second)

    # 2. ipcache and identities: writes before deletes.
    if ipcache_changes is None:
        want_ip = {ip_network(k): int(v) for k, v in state.ipcache.items()}
        have_ip = maps.read_ipcache()
        stale = [net for net in have_ip if net not in want_ip]
    else:
        want_ip = {ip_network(k): int(v) for k in ipcache_changes if (v := state.ipcache.get(k)) is not None}
        have_ip = {}
        stale = [ip_network(k) for k in ipcache_changes if k not in state.ipcache]
    for net, ident in want_ip.items():
        if have_ip.get(net) != ident:
            maps.write_ipcache(net, ident)
            res.ipcache_written += 1
    for ep_id, ep in ok_eps.items():
        for addr in _addrs(state, ep):
            maps.write_lxc(addr, ep_id, ep.identity, flags0[ep_id])
    for net in stale:
        if maps.delete_ipcache(net):
            res.ipcache_deleted += 1

    # 3. policy: new allows/redirects, then stale denies.
    for ep_id, (fd, second) in plans.items():
        _run(fd, second, res, after_write)
        res.applied.add(ep_id)

    # 4. final flags; endpoints that left the state go.
    for ep_id, ep in ok_eps.items():
        for addr in _addrs(state, ep):
            maps.write_lxc(addr, ep_id, ep.identity, _flags(ep))
    wanted_ids = set(state.endpoints) | set(keep)
    current_ip = {i: set(_addrs(state, ep)) for i, ep in state.endpoints.items()}
    for ip, (ep_id, _, _) in maps.read_lxc().items():
        moved = ep_id in ok_eps and ip not in current_ip.get(ep_id, {ip})
        if ep_id not in wanted_ids or moved:
            maps.delete_lxc(ip)
            if not moved:
                res.removed.add(ep_id)
    for ep_id in maps.policy_endpoints():
        if ep_id not in wanted_ids:
            maps.drop_policy_map(ep_id)
            res.removed.add(ep_id)
    return res
