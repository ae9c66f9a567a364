"""IPv6 in the policy language: CNP toCIDR/fromCIDR/toCIDRSet/fromCIDRSet
(with except) and NetworkPolicy ipBlock take both families, as Cilium's and
Kubernetes' documentation describe them (a CIDR is "an IP block", the
Kubernetes ipBlock doc's own example pairs `cidr` with `except` inside it).
What is refused names the file, field path and reason, like every other
policy error (policy/api/problems.py)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

import pytest

from policy.load import load_text
from policy.model import CIDRPeer


def cnp(rule: str, section: str = "egress") -> str:
    body = "\n".join("    " + line for line in rule.strip("\n").splitlines())
    return (
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n"
        f"  endpointSelector: {{matchLabels: {{app: web}}}}\n  {section}:\n  -\n{body}\n"
    )


def netpol(peer: str, section: str = "ingress") -> str:
    key = "from" if section == "ingress" else "to"
    types = "  policyTypes: [Egress]\n" if section == "egress" else ""
    return (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n"
        f"  podSelector: {{}}\n{types}  {section}:\n  - {key}:\n    - {peer}\n"
    )


def cidr_peers(text: str) -> list[CIDRPeer]:
    res = load_text(text, "p.yaml")
    assert not res.errors, [str(e) for e in res.errors]
    (pol,) = res.policies
    return [p for spec in pol.specs for r in spec.rules for p in r.peers if isinstance(p, CIDRPeer)]


V6 = IPv6Network


@pytest.mark.parametrize(
    "text,expected",
    [
        pytest.param(cnp("toCIDR: ['2001:db8::/32']"), [CIDRPeer(V6("2001:db8::/32"))], id="toCIDR"),
        pytest.param(cnp("fromCIDR: ['2001:db8::/32']", "ingress"), [CIDRPeer(V6("2001:db8::/32"))], id="fromCIDR"),
        pytest.param(cnp("toCIDRSet: [{cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}]"),
                     [CIDRPeer(V6("2001:db8::/32"), (V6("2001:db8:1::/48"),))], id="toCIDRSet-except"),
        pytest.param(cnp("fromCIDRSet: [{cidr: '::/0', except: ['fd00::/8']}]", "ingress"),
                     [CIDRPeer(V6("::/0"), (V6("fd00::/8"),))], id="fromCIDRSet-default-route-except"),
        pytest.param(cnp("toCIDR: ['2001:db8::1']"), [CIDRPeer(V6("2001:db8::1/128"))], id="bare-address-is-a-host-prefix"),
        pytest.param(cnp("toCIDR: ['2001:DB8:0:0::/64']"), [CIDRPeer(V6("2001:db8::/64"))], id="any-spelling-of-one-prefix"),
        pytest.param(netpol("ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:bad::/48']}"),
                     [CIDRPeer(V6("2001:db8::/32"), (V6("2001:db8:bad::/48"),))], id="np-ipBlock-except"),
        pytest.param(netpol("ipBlock: {cidr: 'fd00::/8'}", "egress"), [CIDRPeer(V6("fd00::/8"))], id="np-ipBlock-egress"),
    ],
)
def test_ipv6_prefixes_are_accepted(text, expected):
    assert cidr_peers(text) == expected


def test_one_peer_may_name_both_families():
    """One rule, one peer list: an IPv4 and an IPv6 prefix side by side (a
    dual-stack service), each with the excepts of its own family."""
    text = cnp(
        "toCIDR: [10.0.0.0/8, '2001:db8::/32']\n"
        "toCIDRSet:\n- {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}\n- {cidr: 'fd00::/8', except: ['fd00:1::/32']}\n"
    )
    assert cidr_peers(text) == [
        CIDRPeer(IPv4Network("10.0.0.0/8")),
        CIDRPeer(V6("2001:db8::/32")),
        CIDRPeer(IPv4Network("192.168.0.0/16"), (IPv4Network("192.168.1.0/24"),)),
        CIDRPeer(V6("fd00::/8"), (V6("fd00:1::/32"),)),
    ]


def errors(text: str) -> list[str]:
    res = load_text(text, "policies/bad.yaml")
    assert res.policies == []
    return [str(e) for e in res.errors]


@pytest.mark.parametrize(
    "text,line",
    [
        pytest.param(
            cnp("toCIDRSet: [{cidr: 10.0.0.0/8, except: ['2001:db8::/64']}]"),
            "policies/bad.yaml: spec.egress[0].toCIDRSet[0].except[0]: 2001:db8::/64 is IPv6 but cidr 10.0.0.0/8 is IPv4: "
            "an except is carved out of its cidr, so it must be of the same family",
            id="cnp-ipv6-except-of-ipv4-cidr",
        ),
        pytest.param(
            cnp("fromCIDRSet: [{cidr: '2001:db8::/32', except: [10.0.0.0/8]}]", "ingress"),
            "policies/bad.yaml: spec.ingress[0].fromCIDRSet[0].except[0]: 10.0.0.0/8 is IPv4 but cidr 2001:db8::/32 is IPv6: "
            "an except is carved out of its cidr, so it must be of the same family",
            id="cnp-ipv4-except-of-ipv6-cidr",
        ),
        pytest.param(
            netpol("ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:1::/48', 10.1.0.0/16]}"),
            "policies/bad.yaml: spec.ingress[0].from[0].ipBlock.except[1]: 10.1.0.0/16 is IPv4 but cidr 2001:db8::/32 is IPv6: "
            "an except is carved out of its cidr, so it must be of the same family",
            id="np-mixed-except",
        ),
        pytest.param(
            cnp("toCIDRSet: [{cidr: '2001:db8::/32', except: ['2001:db9::/48']}]"),
            "policies/bad.yaml: spec.egress[0].toCIDRSet[0].except[0]: 2001:db9::/48 is not inside 2001:db8::/32",
            id="except-outside-its-cidr",
        ),
        pytest.param(
            netpol("ipBlock: {cidr: '2001:db8::/48', except: ['2001:db8::/32']}"),
            "policies/bad.yaml: spec.ingress[0].from[0].ipBlock.except[0]: 2001:db8::/32 is not inside 2001:db8::/48",
            id="np-except-wider-than-cidr",
        ),
    ],
)
def test_an_except_of_the_other_family_or_outside_is_refused(text, line):
    assert errors(text) == [line]


@pytest.mark.parametrize(
    "value,reason",
    [
        # Host bits set is refused for IPv6 exactly as for IPv4 (and as
        # Kubernetes' strict CIDR validation does): 10.0.0.1/8 never meant 10.0.0.0/8.
        pytest.param("2001:db8::1/32", "invalid CIDR '2001:db8::1/32': 2001:db8::1/32 has host bits set", id="v6-host-bits"),
        pytest.param("10.0.0.1/8", "invalid CIDR '10.0.0.1/8': 10.0.0.1/8 has host bits set", id="v4-host-bits-unchanged"),
        pytest.param("2001:db8::/129", "invalid CIDR '2001:db8::/129'", id="v6-prefix-too-long"),
        pytest.param("2001:db8:::/32", "invalid CIDR '2001:db8:::/32'", id="v6-malformed"),
        pytest.param("::ffff:10.0.0.0/104", "not supported: IPv4-mapped IPv6 CIDR '::ffff:10.0.0.0/104': IPv4 traffic is matched "
                     "by its IPv4 address, so it would match nothing; write 10.0.0.0/8", id="ipv4-mapped"),
        pytest.param("::ffff:0:0/96", "write 0.0.0.0/0", id="ipv4-mapped-everything"),
        pytest.param("fe80::%eth0/64", "a zone (%eth0) names a link, not addresses", id="zone"),
    ],
)
def test_a_bad_ipv6_cidr_is_refused_with_field_and_reason(value, reason):
    for text, field in (
        (cnp(f"toCIDR: ['{value}']"), "spec.egress[0].toCIDR[0]"),
        (cnp(f"fromCIDRSet: [{{cidr: '{value}'}}]", "ingress"), "spec.ingress[0].fromCIDRSet[0].cidr"),
        (netpol(f"ipBlock: {{cidr: '{value}'}}"), "spec.ingress[0].from[0].ipBlock.cidr"),
    ):
        (line,) = errors(text)
        assert line.startswith(f"policies/bad.yaml: {field}: "), line
        assert reason in line


def test_an_ipv4_mapped_except_is_refused_too():
    (line,) = errors(cnp("toCIDRSet: [{cidr: '::/0', except: ['::ffff:10.0.0.0/104']}]"))
    assert line.startswith("policies/bad.yaml: spec.egress[0].toCIDRSet[0].except[0]: not supported: IPv4-mapped IPv6 CIDR")


def test_the_world_entities_of_each_family_are_accepted():
    res = load_text(cnp("toEntities: [world-ipv4, world-ipv6]") + "---\n" + cnp("fromEntities: [world-ipv6]", "ingress"), "p.yaml")
    assert not res.errors, [str(e) for e in res.errors]
