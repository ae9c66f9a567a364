"""`ciliate demo --nodes 3`, as a user runs it: three nodes and one etcd, the
deathstar, the tiefighter and the xwing each on its own node; every stage's
request crosses the underlay and gets what the single-node demo gets."""

from __future__ import annotations

import subprocess
import sys

import pytest

@pytest.mark.privileged
@pytest.mark.envoy
@pytest.mark.etcd
def test_the_three_node_demo_passes_every_stage_and_cleans_up() -> None:
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    out = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--nodes", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "9 of 9 requests as expected" in out.stdout
    assert "identities agree on every node: yes" in out.stdout
    assert "xwing      on node3" in out.stdout and "tiefighter on node2" in out.stdout
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not {n for n in after - before if n.startswith("cildc")}, after - before


def test_nodes_out_of_range_is_a_clear_error() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--nodes", "12"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--nodes takes 2 to 9" in out.stderr
