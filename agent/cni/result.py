"""The CNI result of an ADD: the pod's interfaces, addresses and routes. Pure.

Spec 1.0 lists each address under `ips` with `interface`, the index in
`interfaces` of the interface holding it (the pod's, which carries
`sandbox`): container runtimes take the pod's addresses from there (the
kubelet's `status.podIPs`), so both families are listed, IPv4 first.
0.3.x/0.4.0 results also name each address's `version`. The gateway listed
for each family is the next hop the pod routes through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.cni.addressing import Plan

if TYPE_CHECKING:  # net.py loads pyroute2, which VERSION and every error path do without
    from agent.cni.net import Wired

POD_INTERFACE = 1  # the index of the pod's interface in `interfaces`


def build_result(version: str, *, wired: "Wired", plan: Plan, ifname: str, netns: str) -> dict[str, Any]:
    ips: list[dict[str, Any]] = []
    routes: list[dict[str, str]] = []
    legs = (
        (wired.ipv4, plan.ipv4.gateway if plan.ipv4 else None, "0.0.0.0/0"),
        (wired.ipv6, plan.ipv6.gateway if plan.ipv6 else None, "::/0"),
    )
    for address, gateway, default in legs:
        if address is None or gateway is None:
            continue
        ip: dict[str, Any] = {"address": str(address), "gateway": str(gateway), "interface": POD_INTERFACE}
        if not version.startswith("1."):
            ip = {"version": str(address.version), **ip}
        ips.append(ip)
        routes.append({"dst": default, "gw": str(gateway)})
    return {
        "cniVersion": version,
        "interfaces": [
            {"name": wired.host_ifname, "mac": wired.host_mac},
            {"name": ifname, "mac": wired.pod_mac, "sandbox": netns},
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    }
