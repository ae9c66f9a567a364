"""ICMP and ICMPv6 message types as `icmps` rules name them.

Cilium accepts a type by number (0-255) or by a CamelCase name of its
family; the names are IANA's registries written that way, so a policy
written for Cilium names the same types here. Pure.
"""

from __future__ import annotations

from typing import Any

ICMP_FAMILIES = ("IPv4", "IPv6")

_IPV4 = {
    "EchoReply": 0,
    "DestinationUnreachable": 3,
    "Redirect": 5,
    "Echo": 8,
    "EchoRequest": 8,
    "RouterAdvertisement": 9,
    "RouterSelection": 10,
    "TimeExceeded": 11,
    "ParameterProblem": 12,
    "Timestamp": 13,
    "TimestampReply": 14,
    "Photuris": 40,
    "ExtendedEchoRequest": 42,
    "ExtendedEchoReply": 43,
}

_IPV6 = {
    "DestinationUnreachable": 1,
    "PacketTooBig": 2,
    "TimeExceeded": 3,
    "ParameterProblem": 4,
    "EchoRequest": 128,
    "EchoReply": 129,
    "MulticastListenerQuery": 130,
    "MulticastListenerReport": 131,
    "MulticastListenerDone": 132,
    "RouterSolicitation": 133,
    "RouterAdvertisement": 134,
    "NeighborSolicitation": 135,
    "NeighborAdvertisement": 136,
    "RedirectMessage": 137,
    "RouterRenumbering": 138,
    "ICMPNodeInformationQuery": 139,
    "ICMPNodeInformationResponse": 140,
    "InverseNeighborDiscoverySolicitation": 141,
    "InverseNeighborDiscoveryAdvertisement": 142,
    "HomeAgentAddressDiscoveryRequest": 144,
    "HomeAgentAddressDiscoveryReply": 145,
    "MobilePrefixSolicitation": 146,
    "MobilePrefixAdvertisement": 147,
    "DuplicateAddressRequestCodeSuffix": 157,
    "DuplicateAddressConfirmationCodeSuffix": 158,
    "ExtendedEchoRequest": 160,
    "ExtendedEchoReply": 161,
}

NAMES = {"IPv4": _IPV4, "IPv6": _IPV6}


def icmp_type(family: str, v: Any) -> tuple[int, str | None]:
    """(type number, None), or (0, why `v` names no type of `family`)."""
    if isinstance(v, bool):
        return 0, "must be an ICMP type number or name, got a boolean"
    if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
        v = int(v.strip())
    if isinstance(v, int):
        if not 0 <= v <= 255:
            return 0, f"ICMP type {v} out of range 0-255"
        return v, None
    if not isinstance(v, str):
        return 0, f"must be an ICMP type number or name, got {type(v).__name__}"
    names = NAMES[family]
    if v in names:
        return names[v], None
    other = NAMES["IPv6" if family == "IPv4" else "IPv4"]
    hint = f" ({v} is an {'IPv6' if family == 'IPv4' else 'IPv4'} type: set `family`)" if v in other else ""
    return 0, f"unknown {family} ICMP type {v!r}{hint}"


def type_name(family: str, number: int) -> str:
    """The type's name for display (the first name of that number), or the number."""
    for name, n in NAMES[family].items():
        if n == number and name != "Echo":
            return name
    return str(number)
