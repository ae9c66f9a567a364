"""Endpoints the kernel still serves but the endpoint table lost.

`endpoints.json` is the agent's list of endpoints; the datapath keeps a
record of its own per attached endpoint, beside the endpoint's programs and
maps. When the list has lost an endpoint (moved aside after a crash, an old
backup put back), its pod still has a veth, a program and a policy map, while
the agent would report healthy without it and never again publish its L7
configuration or follow a policy change for it. At start the two are
reconciled against what is real:

- the veth is still there: the endpoint comes back under its id, address and
  identity, with the labels of that identity (the labels that decide its
  policy, and both its addresses, from the datapath's record; the display
  name and pod netns path are not recoverable). CNI DEL
  still finds it: the veth's name is derived from the container id.
- the veth is gone: the pod went while the agent was away; its datapath
  state is removed.
- the identity is unknown too (identities.json lost as well): the agent
  refuses to start, naming the endpoint, rather than guess its policy.

Talks to the datapath and compiler only through their ports.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.core.endpoint_table import EndpointTable
from agent.core.models import EndpointRecord
from agent.core.ports import DatapathControl, PolicyCompiler

log = logging.getLogger(__name__)

RESTORED_PREFIX = "restored:"


class EndpointRestoreError(Exception):
    """The kernel serves an endpoint the agent cannot reconstruct."""


def labels_from_set(label_set: frozenset[str]) -> dict[str, str]:
    """"k8s:app=web" strings -> {"k8s:app": "web"}: labels that map back to
    the same identity label set."""
    out: dict[str, str] = {}
    for item in label_set:
        key, _, value = item.partition("=")
        out[key] = value
    return out


async def restore_lost_endpoints(table: EndpointTable, datapath: DatapathControl, compiler: PolicyCompiler, state_dir: Path) -> list[int]:
    """Reconcile the table with the datapath's records; returns the ids put back
    (endpoints.json is written once, with all of them)."""
    restored: list[EndpointRecord] = []
    for ke in await datapath.attached_endpoints():
        if ke.endpoint_id in table:
            continue
        where = f"endpoint {ke.endpoint_id} ({ke.host_ifname}, {ke.ipv4})"
        if not ke.link_present:
            log.warning("%s: not in %s and its veth is gone; removing its datapath state", where, state_dir / "endpoints.json")
            await datapath.detach_endpoint(ke.endpoint_id)
            continue
        label_set = compiler.labels_of_identity(ke.identity)
        if not label_set:
            raise EndpointRestoreError(
                f"{where} is attached in the kernel, but {state_dir / 'endpoints.json'} does not list it and identity "
                f"{ke.identity} is unknown to {state_dir / 'identities.json'}: put those files back from a backup, or "
                f"remove the pod (CNI DEL) or its veth, then start the agent again"
            )
        known = [r for i in table.ids() if (r := table.record(i)) is not None] + restored
        clash = next((r for r in known if r.ipv4 == ke.ipv4), None)
        if clash is not None:
            raise EndpointRestoreError(
                f"{where} is attached in the kernel, but {state_dir / 'endpoints.json'} gives its address to endpoint "
                f"{clash.id} ({clash.host_ifname}): one of them is stale; remove that pod (CNI DEL) and start again"
            )
        rec = EndpointRecord(
            id=ke.endpoint_id,
            container_id=RESTORED_PREFIX + ke.host_ifname,
            host_ifname=ke.host_ifname,
            ipv4=ke.ipv4,
            ipv6=ke.ipv6,
            labels=labels_from_set(label_set),
        )
        restored.append(rec)
        log.warning("%s: not in endpoints.json; restored from the datapath's record with identity %d", where, ke.identity)
    table.restore(restored)
    return [r.id for r in restored]
