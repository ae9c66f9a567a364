"""Pure: an IPv6 CIDR identity's address space becomes Envoy RBAC ranges of
its own family (Envoy matches an address against ranges of its family only,
as the kernel's per-family tries do), with the more specific prefixes of
other identities carved out, next to the IPv4 ones."""

from __future__ import annotations

from ipaddress import IPv6Network

from tests.xds.fixtures import rule, state
from tests.xds.test_render import PORT, rbac_policies
from xds.render import Renderer

V6_CIDR, V6_EXCEPT = 1 << 24, (1 << 24) + 1


def test_ipv6_identity_is_an_ipv6_source_range_minus_its_holes():
    st = state({PORT: (rule([V6_CIDR], path="/"),)},
               extra_ipcache={IPv6Network("2001:db8::/32"): V6_CIDR, IPv6Network("2001:db8:bad::/48"): V6_EXCEPT})
    pol = rbac_policies(Renderer().render(st))["peers-0"]
    assert pol["principals"] == [{"orIds": {"ids": [{"andIds": {"ids": [
        {"directRemoteIp": {"addressPrefix": "2001:db8::", "prefixLen": 32}},
        {"notId": {"orIds": {"ids": [{"directRemoteIp": {"addressPrefix": "2001:db8:bad::", "prefixLen": 48}}]}}},
    ]}}]}}]
