"""The agent's answers to reads: health, status, the identity list, an
endpoint's kernel policy decoded, and the counts the gauges show.

Pure: each answer is assembled from what it is handed (the components' own
status readings, the endpoint table, the compiler's identity labels, the
entries the datapath dumped); the Agent does the reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.endpoint_table import EndpointTable
from agent.core.models import (
    BpfPolicyDump,
    BpfPolicyEntry,
    ConntrackFill,
    Endpoint,
    EndpointRecord,
    FamilyStatus,
    Health,
    Identity,
    IdentityList,
    PolicyList,
    Status,
    UpstreamPortsStatus,
)
from agent.core.ports import DumpedEntry, FamilySupport
from policy.compiled import RESERVED_IDENTITIES


@dataclass(frozen=True, slots=True)
class Readings:
    """The components' own status, read once for one answer."""

    regenerating: bool  # the regeneration worker runs
    proxy: Mapping[str, Any]
    kubernetes: Mapping[str, Any] | None = None  # None: not in Kubernetes mode
    kvstore: Mapping[str, Any] | None = None  # None: not in cluster mode


def _check(reading: Mapping[str, Any]) -> str:
    return "ok" if reading.get("ok") else str(reading.get("detail") or "not ready")


def health_of(r: Readings) -> Health:
    checks = {"regeneration": "ok" if r.regenerating else "worker not running"}
    checks["proxy"] = "ok" if r.proxy.get("ok", True) else str(r.proxy.get("detail") or "not ready")
    checks["api"] = "ok"
    if r.kubernetes is not None:
        checks["kubernetes"] = _check(r.kubernetes)
    if r.kvstore is not None:
        checks["kvstore"] = _check(r.kvstore)
    return Health(ok=all(v == "ok" for v in checks.values()), checks=checks)


def _scalars(reading: Mapping[str, Any], kinds: tuple[type, ...]) -> dict[str, Any]:
    """The plain values of a reading (what Status's fields can carry)."""
    return {k: v for k, v in reading.items() if isinstance(v, kinds) or v is None}


def status_of(
    r: Readings,
    policies: PolicyList,
    endpoints: dict[str, int],
    state_dir: Path,
    policy_dir: Path | None,
    conntrack: ConntrackFill | None,
    upstream_ports: UpstreamPortsStatus | None = None,
    families: dict[str, FamilyStatus] | None = None,
) -> Status:
    """`endpoints`: endpoints_by_state(); `conntrack`: as last read from the kernel."""
    return Status(
        ok=health_of(r).ok,
        revision=policies.revision,
        endpoints=endpoints,
        policies=policies_by_state(policies),
        proxy=_scalars(r.proxy, (str, int, bool)),
        state_dir=str(state_dir),
        policy_dir=str(policy_dir) if policy_dir else None,
        kubernetes=_scalars(r.kubernetes, (str, int, float, bool)) if r.kubernetes is not None else None,
        kvstore=_scalars(r.kvstore, (str, int, float, bool)) if r.kvstore is not None else None,
        conntrack=conntrack,
        upstream_ports=upstream_ports,
        families=families or {},
    )


def families_of(support: Iterable[FamilySupport], records: Iterable[EndpointRecord]) -> dict[str, FamilyStatus]:
    """Per family the datapath reports on: enforced or what happens to its
    packets, and how many endpoints hold an address of it (so an operator sees
    whose traffic a family that is not enforced concerns)."""
    held: dict[int, int] = {4: 0, 6: 0}
    for rec in records:
        held[4] += rec.ipv4 is not None
        held[6] += rec.ipv6 is not None
    return {
        f"ipv{f.version}": FamilyStatus(enforced=f.enforced, detail=f.detail, endpoints=held.get(f.version, 0))
        for f in sorted(support, key=lambda f: f.version)
    }


def endpoints_by_state(table: EndpointTable) -> dict[str, int]:
    """Endpoints by state (the status, the ciliate_endpoint_state gauge)."""
    counts: dict[str, int] = {}
    for i in table.ids():
        live = table.live(i)
        if live is not None:
            counts[live.state.value] = counts.get(live.state.value, 0) + 1
    return counts


def policies_by_state(policies: PolicyList) -> dict[str, int]:
    """Policies by status (the status, the ciliate_policies gauge)."""
    counts: dict[str, int] = {}
    for s in policies.policies:
        counts[s.state] = counts.get(s.state, 0) + 1
    return counts


def identities_by_type(labels: Mapping[int, frozenset[str]]) -> dict[str, int]:
    """Identities by type (reserved, endpoint, cidr), for the ciliate_identity gauge."""
    counts: dict[str, int] = {}
    for i, names in labels.items():
        kind = "reserved" if i in RESERVED_IDENTITIES else "cidr" if any(x.startswith("cidr:") for x in names) else "endpoint"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def identity_list(labels: Mapping[int, frozenset[str]], endpoints: Iterable[Endpoint]) -> IdentityList:
    """Every identity allocated or reserved, with its labels and the endpoints that have it."""
    users: dict[int, list[int]] = {}
    for v in endpoints:
        if v.identity is not None:
            users.setdefault(v.identity, []).append(v.id)
    ids = set(labels) | set(RESERVED_IDENTITIES) | set(users)
    out = []
    for i in sorted(ids):
        names = sorted(labels.get(i, ())) or ([f"reserved:{RESERVED_IDENTITIES[i]}"] if i in RESERVED_IDENTITIES else [])
        out.append(Identity(id=i, labels=names, reserved=i in RESERVED_IDENTITIES, endpoints=users.get(i, [])))
    return IdentityList(identities=out)


def bpf_policy_dump(endpoint_id: int, entries: Iterable[DumpedEntry], labels: Mapping[int, frozenset[str]]) -> BpfPolicyDump:
    """An endpoint's kernel policy map with each peer identity's labels."""
    return BpfPolicyDump(
        endpoint_id=endpoint_id,
        entries=[
            BpfPolicyEntry(
                identity=e.identity,
                labels=sorted(labels.get(e.identity, ())) if e.identity else ["any"],
                direction=e.direction,
                protocol=e.protocol,
                ports=e.ports,
                verdict=e.verdict,
                proxy_port=e.proxy_port,
            )
            for e in entries
        ],
    )
