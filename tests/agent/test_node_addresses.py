"""The node's addresses for the `host` identity (agent/adapters/node_addresses.py):
IPv6 read from /proc/net/if_inet6 gives what a netlink dump gives, minus
the link-local addresses that never count."""

from __future__ import annotations

from ipaddress import IPv6Address, ip_address
from pathlib import Path

from agent.adapters.node_addresses import ipv6_from_if_inet6, read_host_ips
from agent.core.addresses import host_addresses

SAMPLE = """\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 2c 40 20 80 lxc1234
fd000010025100010000000000000001 03 40 00 80 cilium_host
20010db8000000000000000000000005 04 40 00 00 eth0
"""


def test_link_local_lines_are_skipped_and_the_rest_decoded() -> None:
    assert ipv6_from_if_inet6(SAMPLE) == [
        IPv6Address("::1"), IPv6Address("fd00:10:251:1::1"), IPv6Address("2001:db8::5"),
    ]
    assert ipv6_from_if_inet6("") == [] and ipv6_from_if_inet6("garbage\n") == []


def test_the_same_addresses_as_a_netlink_dump_of_this_namespace() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        dumped = [ip_address(a.get_attr("IFA_ADDRESS")) for family in (2, 10) for a in ipr.get_addr(family=family)]
    assert read_host_ips() == host_addresses(dumped)


def test_no_ipv6_file_means_no_ipv6_address(tmp_path: Path) -> None:
    assert all(a.version == 4 for a in read_host_ips(tmp_path / "missing"))
