"""`ciliate agent`'s cluster flags: a wrong one stops the agent at once with
the flag (or file), the field and the reason, before anything is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--kvstore", "etcd", "--kvstore-opt", "etcd.endpoints=http://127.0.0.1:2379"], "--pod-cidr: an IPv4 CIDR is required with --kvstore"),
        (["--kvstore", "etcd", "--kvstore-opt", "etcd.endpoints=ftp://127.0.0.1:2379", "--pod-cidr", "10.251.1.0/24"], "etcd.endpoints"),
        (["--kvstore", "etcd", "--kvstore-opt", "etcd.nonsense=1", "--pod-cidr", "10.251.1.0/24"], "etcd.nonsense"),
        (["--kvstore", "etcd", "--pod-cidr", "10.251.1.0/24"], "endpoints"),
        (["--kvstore", "etcd", "--kvstore-opt", "etcd.endpoints=http://127.0.0.1:2379", "--pod-cidr", "10.251.1.0/33"], "--pod-cidr"),
        (
            ["--kvstore", "etcd", "--kvstore-opt", "etcd.endpoints=http://127.0.0.1:2379", "--pod-cidr", "10.251.1.0/24", "--node-ip", "10.251.1.9"],
            "inside --pod-cidr",
        ),
        (["--pod-cidr", "10.251.1.0/24"], "without --kvstore etcd"),
        (
            ["--kvstore", "etcd", "--kvstore-opt", "etcd.endpoints=http://127.0.0.1:2379", "--pod-cidr", "10.251.1.0/24",
             "--pod-cidr", "10.252.1.0/24"],
            "--pod-cidr: given twice for IPv4",
        ),
        (
            ["--kvstore", "etcd", "--kvstore-opt", "etcd.endpoints=http://127.0.0.1:2379", "--pod-cidr", "fd00:10:1::/64"],
            "an IPv4 CIDR is required",
        ),
        (
            ["--kvstore", "etcd", "--kvstore-opt", "etcd.endpoints=http://127.0.0.1:2379", "--pod-cidr", "10.251.1.0/24",
             "--pod-cidr", "fd00:10:1::/64", "--node-ip", "10.250.0.1", "--node-ip", "fd00:10:1::9"],
            "--node-ip fd00:10:1::9 is inside --pod-cidr fd00:10:1::/64",
        ),
    ],
    ids=["no-pod-cidr", "bad-scheme", "unknown-option", "no-endpoints", "bad-cidr", "node-ip-in-pod-cidr", "no-kvstore",
         "two-ipv4-cidrs", "ipv6-cidr-alone", "node-ipv6-in-pod-cidr6"],
)
def test_a_wrong_cluster_flag_is_named(agent_cli, tmp_path: Path, flags: list[str], says: str) -> None:
    out = agent_cli(tmp_path, *flags)
    assert out.returncode == 2, out
    assert says in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "bpf").exists(), "the kernel side was touched before the flags were checked"


def test_a_bad_etcd_config_file_names_the_file_and_field(agent_cli, tmp_path: Path) -> None:
    cfg = tmp_path / "etcd.yaml"
    cfg.write_text("endpoints: [http://127.0.0.1:2379]\ntrusted-ca-fle: /nowhere\n")
    out = agent_cli(tmp_path, "--kvstore", "etcd", "--kvstore-opt", f"etcd.config={cfg}", "--pod-cidr", "10.251.1.0/24")
    assert out.returncode == 2, out
    assert str(cfg) in out.stderr and "trusted-ca-fle" in out.stderr, out.stderr


@pytest.mark.privileged
def test_node_ip_defaults_to_a_global_address_when_etcd_is_on_this_machine() -> None:
    """etcd on loopback: the node's address is its first global one (not
    127.0.0.1, which no other node could route to); with none, the error
    asks for --node-ip."""
    ns = f"cilnip{os.getpid() % 100000}"
    probe = [sys.executable, "-c", "from agent.cli.kvstore_flags import _node_ip; print(_node_ip(('http://127.0.0.1:2379',)))"]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        alone = subprocess.run(["ip", "netns", "exec", ns, *probe], capture_output=True, text=True, timeout=60)
        assert alone.returncode != 0 and "pass --node-ip" in alone.stderr, alone
        subprocess.run(["ip", "-n", ns, "link", "add", "u0", "type", "veth", "peer", "name", "u1"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.250.7.3/24", "dev", "u0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "u0", "up"], check=True)
        found = subprocess.run(["ip", "netns", "exec", ns, *probe], capture_output=True, text=True, timeout=60)
        assert found.returncode == 0 and found.stdout.strip() == "10.250.7.3", found
    finally:
        subprocess.run(["ip", "netns", "del", ns])
