"""`ciliate policy trace` and `ciliate policy diff` with IPv6: addresses and
CIDR pieces of both families, `--stack` to ask about a dual-stack node, and
the honest answer on today's IPv4-only node (the datapath drops IPv6)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path

import pytest
from policytest_helpers import policies

from tests.policy.policytest_helpers import run_cli
from agent.core.models import FlowEvent
from policy.compiler import compile_state
from policy.diff import diff_policies
from policy.diff_observed import replay
from policy.endpoint import Endpoint
from policy.errors import TraceInputError
from policy.families import Stack
from policy.trace import parse_party

WEB = Endpoint(1, {"app": "web"}, IPv4Address("100.64.0.1"))
OTHER = Endpoint(2, {"app": "other"}, IPv4Address("100.64.0.2"))


def cnp(name: str, egress: str) -> str:
    body = "\n".join("  " + line for line in egress.strip("\n").splitlines())
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n"
            f"  endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n{body}\n")


OLD = cnp("p", "- toCIDR: ['2001:db8::/32', 10.0.0.0/8]")
NEW = cnp("p", "- toCIDRSet: [{cidr: '2001:db8::/32', except: ['2001:db8:bad::/48']}]\n- toEntities: [world-ipv4]\n"
               "  toPorts: [{ports: [{port: '443', protocol: TCP}]}]")


run = run_cli


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "old.yaml").write_text(OLD)
    (tmp_path / "new.yaml").write_text(NEW)
    (tmp_path / "eps.yaml").write_text("- labels: {app: web}\n- labels: {app: other}\n")
    return {k: str(tmp_path / f"{k}.yaml") for k in ("old", "new", "eps")}


# ---------------------------------------------------------------- trace


@pytest.mark.parametrize("spec,value", [
    ("ip:2001:db8::1", IPv6Address("2001:db8::1")),
    ("ip: fd00::1 ", IPv6Address("fd00::1")),
    ("ip:10.0.0.1", IPv4Address("10.0.0.1")),
])
def test_trace_specs_take_both_families(spec, value):
    assert parse_party(spec) == ("ip", value)


def test_a_bad_address_says_both_families_are_expected():
    with pytest.raises(TraceInputError, match="expected an IPv4 or IPv6 address"):
        parse_party("ip:2001:db8:::1")


@pytest.mark.parametrize("dst,code,verdict,dst_identity_labels", [
    ("ip:2001:db8::1", 0, "allowed", "cidr:2001:db8::/32, reserved:world-ipv6"),
    ("ip:2001:db8:bad::1", 1, "denied", "cidr:2001:db8::/32, cidr:2001:db8:bad::/48, reserved:world-ipv6"),
    ("ip:2001:db9::1", 1, "denied", "reserved:world-ipv6"),
    ("entity:world-ipv6", 1, "denied", "reserved:world-ipv6"),
    ("ip:8.8.8.8", 0, "allowed", "reserved:world-ipv4"),
])
def test_trace_an_ipv6_flow_on_a_dual_stack_node(files, capsys, dst, code, verdict, dst_identity_labels):
    rc, out, _ = run(capsys, "policy", "trace", "--policies", files["new"], "--src", "labels:app=web", "--dst", dst,
                     "--dport", "443", "--stack", "dual")
    assert rc == code
    assert f"verdict: {verdict}" in out
    assert f"({dst_identity_labels})" in out


def test_trace_an_ipv6_flow_on_an_ipv4_only_node_says_the_datapath_drops_it(files, capsys):
    rc, out, _ = run(capsys, "policy", "trace", "--policies", files["new"], "--src", "labels:app=web",
                     "--dst", "ip:2001:db8::1", "--dport", "443", "--stack", "ipv4")
    assert rc == 1
    assert "reason:  the node does not run IPv6 (ipv4 stack): its datapath drops every IPv6 packet" in out
    assert "hint:    --stack dual" in out
    rc, out, _ = run(capsys, "policy", "trace", "--policies", files["new"], "--src", "labels:app=web",
                     "--dst", "ip:2001:db8::1", "--dport", "443", "--stack", "ipv4", "-o", "json")
    assert rc == 1 and json.loads(out)["steps"] == []


def test_trace_defaults_to_the_dual_stack_the_agent_compiles(files, capsys):
    rc, out, _ = run(capsys, "policy", "trace", "--policies", files["new"], "--src", "labels:app=web",
                     "--dst", "ip:8.8.8.8", "--dport", "443")
    assert rc == 0 and "dst:     identity 9 (reserved:world-ipv4)" in out
    rc, out, _ = run(capsys, "policy", "trace", "--policies", files["new"], "--src", "labels:app=web",
                     "--dst", "ip:2001:db8::1", "--dport", "443")
    assert rc == 0 and "verdict: allowed" in out and "(cidr:2001:db8::/32, reserved:world-ipv6)" in out


def test_trace_ipv4_world_on_an_ipv4_only_node_is_world_and_world_ipv4(files, capsys):
    for dst in ("ip:8.8.8.8", "entity:world-ipv4", "entity:world"):
        rc, out, _ = run(capsys, "policy", "trace", "--policies", files["new"], "--src", "labels:app=web",
                         "--dst", dst, "--dport", "443", "--stack", "ipv4")
        assert rc == 0 and "dst:     identity 2 (reserved:world)" in out, dst


# ---------------------------------------------------------------- diff


def test_diff_names_ipv6_pieces_on_a_dual_stack_node():
    d = diff_policies(policies(OLD), policies(NEW), [WEB, OTHER], stack=Stack.DUAL)
    by_dst = {}
    for c in d.changes:
        by_dst.setdefault(c.dst.name, set()).add((str(c.ports), c.protocol.name, c.old, c.new))
    assert by_dst["cidr:2001:db8:bad::/48"] == {
        ("1-65535", "TCP", "allowed", "denied"), ("1-65535", "UDP", "allowed", "denied"), ("1-65535", "SCTP", "allowed", "denied"),
        ("0-255", "ICMP", "allowed", "denied"), ("0-255", "ICMPV6", "allowed", "denied"),
    }
    assert ("443", "TCP", "denied", "allowed") in by_dst["entity:world-ipv4"]
    assert "cidr:2001:db8::/32" not in by_dst  # still allowed, whole
    end = next(c.dst for c in d.changes if c.dst.name == "cidr:2001:db8:bad::/48")
    assert end.address is not None and end.address in IPv6Network("2001:db8:bad::/48")
    assert d.new.identity_of(end.address) == d.new.ipcache[IPv6Network("2001:db8:bad::/48")]


def test_diff_of_ipv6_pieces_json(files, capsys):
    rc, out, _ = run(capsys, "policy", "diff", "--old", files["old"], "--new", files["new"], "--endpoints", files["eps"],
                     "--stack", "dual", "-o", "json")
    assert rc == 1
    text = json.dumps(json.loads(out))
    assert '"cidr:2001:db8:bad::/48"' in text and '"2001:db8:bad::"' in text


def test_diff_on_an_ipv4_only_node_leaves_ipv6_out_and_says_so(files, capsys):
    rc, out, _ = run(capsys, "policy", "diff", "--old", files["old"], "--new", files["new"], "--endpoints", files["eps"],
                     "--stack", "ipv4")
    assert rc == 1
    assert "2001:db8" not in out.split("\nnote:")[0]
    assert ("note: 2 prefixes of a family this node does not run (ipv4 stack) not judged: its datapath drops "
            "those packets; --stack dual judges them") in out
    assert "app=web -> entity:world: 1 change" in out


def test_diff_of_ipv6_only_changes_on_an_ipv4_only_node_changes_nothing():
    old = policies(cnp("p", "- toCIDR: ['2001:db8::/32']"))
    new = policies(cnp("p", "- toCIDR: ['2001:db8::/48']"))
    assert diff_policies(old, new, [WEB]).changes == ()
    assert diff_policies(old, new, [WEB], stack=Stack.DUAL).changes != ()


def test_observed_flows_with_ipv6_addresses_replay():
    proposed = compile_state(policies(NEW), [WEB, OTHER], stack=Stack.DUAL)
    events = [FlowEvent(time=1.0, type="forward", protocol="TCP", src_ip="100.64.0.1", dst_ip="2001:db8:bad::7",
                        dst_port=443, verdict="forward")]
    r = replay(events, proposed)
    [g] = r.changed
    assert (g.key.dst, g.key.old, g.key.new) == ("2001:db8:bad::7", "allowed", "denied")
