"""A Pod's named ports: what `port: http` in a policy means for this pod.

Kubernetes names container ports in `spec.containers[].ports[]` (`name`,
`containerPort`, `protocol`, TCP unless given). Only named ones matter to
policy. The API server validates them; a simulator or a hostile server may
not, so anything that is not a valid name, port and protocol is left out
(matching nothing, which fails closed) and said why. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policy.named_ports import port_name_problem

PROTOCOLS = ("TCP", "UDP", "SCTP")


def _problem(p: Mapping[str, Any]) -> str | None:
    name, port, proto = p.get("name"), p.get("containerPort"), p.get("protocol") or "TCP"
    if not isinstance(name, str) or (why := port_name_problem(name)) is not None:
        return f"name {name!r}: {why if isinstance(name, str) else 'not a string'}"
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return f"containerPort {port!r} is not a port number"
    if proto not in PROTOCOLS:
        return f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}"
    return None


def pod_named_ports(pod: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """([{name, port, protocol}], [why each left-out port was left out]).
    A name given twice is left out both times: which number would it mean?"""
    spec = pod.get("spec") or {}
    found: list[dict[str, Any]] = []
    problems: list[str] = []
    for c in spec.get("containers") or ():
        for p in (c.get("ports") or ()) if isinstance(c, Mapping) else ():
            if not isinstance(p, Mapping) or p.get("name") in (None, ""):
                continue  # unnamed: policy cannot refer to it
            why = _problem(p)
            if why is not None:
                problems.append(why)
                continue
            found.append({"name": p["name"].lower(), "port": p["containerPort"], "protocol": p.get("protocol") or "TCP"})
    names = [p["name"] for p in found]
    twice = {n for n in names if names.count(n) > 1}
    problems += [f"name {n!r} is given to more than one port" for n in sorted(twice)]
    return [p for p in found if p["name"] not in twice], problems
