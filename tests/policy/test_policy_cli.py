"""`ciliate policy validate|trace` as a user runs them: exit codes, output
lines, -o json, and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.policy.policytest_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
L7 = str(ROOT / "examples/starwars/2-l7.yaml")
L3L4 = str(ROOT / "examples/starwars/1-l3l4.yaml")
TIE = "labels:org=empire,class=tiefighter"
XWING = "labels:org=alliance,class=xwing"
DEATHSTAR = "labels:org=empire,class=deathstar"


run = run_cli


def test_validate_examples_ok(capsys):
    code, out, _ = run(capsys, "policy", "validate", str(ROOT / "examples"))
    assert code == 0 and out.startswith("ok: ")


def test_validate_reports_one_line_per_error(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec:\n  endpointSelector: {}\n"
        "  ingress:\n  - fromEntities: [moon]\n---\nkind: Nope\n"
    )
    code, out, _ = run(capsys, "policy", "validate", str(bad), L7)
    assert code == 1
    assert out.splitlines() == [
        f"{bad}:0: spec.ingress[0].fromEntities[0]: unknown entity 'moon': expected one of "
        "all, cluster, world, world-ipv4, world-ipv6, host, remote-node, init, health, unmanaged, kube-apiserver, ingress",
        f"{bad}:1: kind: unknown kind 'Nope': expected one of CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy",
    ]


def test_validate_json(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("{{{")
    code, out, _ = run(capsys, "policy", "validate", "-o", "json", str(bad))
    data = json.loads(out)
    assert code == 1 and data["valid"] is False
    assert data["errors"][0]["file"] == str(bad) and "invalid YAML" in data["errors"][0]["reason"]


@pytest.mark.parametrize(
    "args,code,verdict,layer",
    [
        pytest.param([L7, "--src", TIE, "--dst", DEATHSTAR, "--dport", "80", "--method", "POST", "--path", "/v1/request-landing"],
                     0, "allowed", "l7", id="landing-allowed"),
        pytest.param([L7, "--src", TIE, "--dst", DEATHSTAR, "--dport", "80/TCP", "--method", "PUT", "--path", "/v1/exhaust-port"],
                     1, "denied", "l7", id="exhaust-port-403"),
        pytest.param([L7, "--src", XWING, "--dst", DEATHSTAR, "--dport", "80", "--method", "POST", "--path", "/v1/request-landing"],
                     1, "denied", "l3l4", id="alliance-dropped"),
        pytest.param([L3L4, "--src", TIE, "--dst", DEATHSTAR, "--dport", "80", "--method", "PUT", "--path", "/v1/exhaust-port"],
                     0, "allowed", "l3l4", id="l3l4-stage-no-http-check"),
        pytest.param([L3L4, "--src", "ip:1.2.3.4", "--dst", DEATHSTAR, "--dport", "80"], 1, "denied", "l3l4", id="world-dropped"),
        pytest.param([L3L4, "--src", TIE, "--dst", DEATHSTAR, "--dport", "53/udp"], 1, "denied", "l3l4", id="udp"),
        pytest.param([L3L4, "--src", "entity:host", "--dst", DEATHSTAR, "--dport", "53/udp"], 0, "allowed", "l3l4", id="host-allowed-by-default"),
    ],
)
def test_trace_json(capsys, args, code, verdict, layer):
    got, out, _ = run(capsys, "policy", "trace", "--policies", *args, "-o", "json")
    data = json.loads(out)
    assert (got, data["verdict"], data["layer"]) == (code, verdict, layer)
    assert data["reason"]


def test_trace_text_names_rule(capsys):
    code, out, _ = run(capsys, "policy", "trace", "--policies", L7, "--src", TIE, "--dst", DEATHSTAR, "--dport", "80",
                       "--method", "PUT", "--path", "/v1/exhaust-port")
    assert code == 1
    assert out.splitlines()[:2] == ["verdict: denied", "layer:   l7"]
    assert "rule:    CiliumNetworkPolicy default/rule1 spec.ingress[0]" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        pytest.param(["--src", "pod:x", "--dst", DEATHSTAR, "--dport", "80"], "bad SPEC 'pod:x'", id="bad-spec"),
        pytest.param(["--src", "entity:moon", "--dst", DEATHSTAR, "--dport", "80"], "unknown entity 'moon'", id="bad-entity"),
        pytest.param(["--src", "ip:1.2.3", "--dst", DEATHSTAR, "--dport", "80"], "bad address", id="bad-ip"),
        pytest.param(["--src", TIE, "--dst", DEATHSTAR, "--dport", "99999"], "port out of range", id="bad-port"),
        pytest.param(["--src", TIE, "--dst", DEATHSTAR, "--dport", "80/GRE"], "protocol must be TCP, UDP, SCTP, ICMP or ICMPv6", id="bad-proto"),
        pytest.param(["--src", "ip:1.1.1.1", "--dst", "ip:2.2.2.2", "--dport", "80"], "neither side is a local endpoint", id="no-endpoint"),
    ],
)
def test_trace_bad_input_exit_2(capsys, argv, message):
    code, _, err = run(capsys, "policy", "trace", "--policies", L7, *argv)
    assert code == 2 and message in err


def test_trace_with_invalid_policies_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {}\n")
    code, _, err = run(capsys, "policy", "trace", "--policies", str(bad), "--src", TIE, "--dst", DEATHSTAR, "--dport", "80")
    assert code == 2 and f"{bad}: spec.endpointSelector: required" in err


def test_console_script_never_tracebacks_on_garbage(tmp_path):
    garbage = tmp_path / "g.yaml"
    garbage.write_bytes(b"\xff\xfe\x00 not utf8 \x00")
    exe = Path(sys.executable).with_name("ciliate")
    proc = subprocess.run([str(exe), "policy", "validate", str(garbage)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"{garbage}: cannot read")


TO_SERVICES = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-db, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toServices: [{k8sService: {serviceName: db, namespace: data}}]
    toPorts: [{ports: [{port: '5432', protocol: TCP}]}]
"""


def test_to_services_outside_kubernetes_is_valid_selects_nothing_and_says_so(capsys, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(TO_SERVICES)
    why = "CiliumNetworkPolicy shop/to-db: spec.egress[0]: toServices k8sService db in data: selects nothing: no Service source"
    code, out, err = run(capsys, "policy", "validate", str(f))
    assert code == 0 and "ok: 1 policies valid" in out and f"note: {why}" in err
    code, out, err = run(capsys, "policy", "trace", "--policies", str(f), "--src", "labels:app=web,io.kubernetes.pod.namespace=shop",
                         "--dst", "ip:203.0.113.5", "--dport", "5432")
    assert code != 0 and "verdict: denied" in out and f"note:    {why}" in out
    eps = tmp_path / "eps.yaml"
    eps.write_text("- labels: {app: web, io.kubernetes.pod.namespace: shop}\n")
    code, out, err = run(capsys, "policy", "diff", "--old", str(f), "--new", str(f), "--endpoints", str(eps))
    assert f"note: new policies: {why}" in err, (code, out, err)


PORTS_LANGUAGE = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: http}, {port: 5000, protocol: SCTP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ping, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - icmps: [{fields: [{type: EchoRequest}, {type: EchoRequest, family: IPv6}]}]
"""


@pytest.mark.parametrize("dport, named, code", [
    ("http", ["http=8080"], 0),
    ("8080", ["http=8080"], 0),
    ("8081", ["http=8080"], 1),
    ("8080", [], 1),  # the destination serves no port named http: the name admits nothing
    ("5000/SCTP", [], 0),
    ("5000/UDP", [], 1),
    ("EchoRequest/ICMP", [], 0),
    ("8/ICMP", [], 0),
    ("128/ICMPv6", [], 0),
    ("8/ICMPv6", [], 1),
    ("Timestamp/ICMP", [], 1),
])
def test_trace_takes_named_ports_sctp_and_icmp_types(capsys, tmp_path, dport, named, code):
    f = tmp_path / "p.yaml"
    f.write_text(PORTS_LANGUAGE)
    extra = [a for n in named for a in ("--named-port", n)]
    got, out, err = run(capsys, "policy", "trace", "--policies", str(f), "--src", "labels:app=client",
                        "--dst", "labels:app=web", "--dport", dport, *extra)
    assert got == code, out + err


@pytest.mark.parametrize("argv, message", [
    (["--dport", "http"], "the destination serves no TCP port named 'http'"),
    (["--dport", "NeighborSolicitation/ICMP"], "NeighborSolicitation is an IPv6 type"),
    (["--dport", "80", "--named-port", "http_x=80"], "bad --named-port 'http_x=80'"),
    (["--dport", "80/GRE"], "protocol must be TCP, UDP, SCTP, ICMP or ICMPv6"),
])
def test_trace_refuses_bad_ports_with_a_reason(capsys, tmp_path, argv, message):
    f = tmp_path / "p.yaml"
    f.write_text(PORTS_LANGUAGE)
    got, out, err = run(capsys, "policy", "trace", "--policies", str(f), "--src", "labels:app=client",
                        "--dst", "labels:app=web", *argv)
    assert got == 2 and message in err, out + err


def test_an_offline_trace_loads_neither_the_agent_nor_an_http_client():
    """`ciliate policy trace` is a tool people run in loops and in CI: it
    loads the policy code only (the agent's CLI, API models and httpx
    doubled its start-up), and still answers."""
    probe = (
        "import sys\n"
        "from agent.cli.ciliate import main\n"
        f"rc = main(['policy', 'trace', '--policies', {L7!r}, '--src', {TIE!r}, '--dst', {DEATHSTAR!r},"
        " '--dport', '80', '--method', 'POST', '--path', '/v1/request-landing'])\n"
        "heavy = sorted(m for m in ('httpx', 'agent.core.models', 'agent.api.client', 'agent.cli.agent_commands', 'demo.command', 'agent.cli.policy_diff', 'policy.diff') if m in sys.modules)\n"
        "print('RC', rc, 'HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "verdict: allowed" in out.stdout, out.stdout + out.stderr
    assert "RC 0 HEAVY []" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("setting, looked_for", [(None, False), ("", True)])
def test_ciliate_as_its_own_process_looks_for_no_pydantic_plugins(setting, looked_for):
    """Run as a process (main() without argv), ciliate does not have pydantic
    look for plugins (it has none; looking reads every installed
    distribution's metadata): PYDANTIC_DISABLE_PLUGINS defaults to all, and
    a value the user sets is pydantic's to judge (empty: look). The trace
    answers alike, and the cycle collector is on again after it."""
    probe = (
        "import gc, sys, importlib.metadata as md\n"
        "looked = []\n"
        "real = md.distributions\n"
        "md.distributions = lambda *a, **k: looked.append(1) or real(*a, **k)\n"
        "from agent.cli.ciliate import main\n"
        f"sys.argv[1:] = ['policy', 'trace', '--policies', {L7!r}, '--src', {TIE!r}, '--dst', {DEATHSTAR!r}, '--dport', '80']\n"
        "rc = main()\n"
        "print('RC', rc, 'LOOKED', bool(looked), 'GC', gc.isenabled())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    env["CILIATE_CACHE_DIR"] = "off"  # parse for real: a cached parse never imports pydantic
    if setting is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = setting
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert "verdict: allowed" in out.stdout, out.stdout + out.stderr
    assert f"RC 0 LOOKED {looked_for} GC True" in out.stdout, out.stdout + out.stderr


def test_help_still_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "agent.cli", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    for command in ("policy", "agent", "status", "endpoint", "identity", "bpf", "monitor", "demo"):
        assert command in out.stdout, out.stdout
    out = subprocess.run([sys.executable, "-m", "agent.cli", "policy", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    for sub in ("validate", "trace", "diff", "get"):
        assert sub in out.stdout, out.stdout
