"""A cluster event costs the kernel what it changes: the datapath writes
only the prefixes the compiler says moved since the state it applied last,
and still reads every map back at least every FULL_RESYNC seconds (and at
start), which repairs anything written behind its back. In both, the
kernel's ipcache ends up exactly the compiled one."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, ip_network

import pytest

from policy.compiler import Compiler
from policy.identity import identity_labels

pytestmark = pytest.mark.privileged

APPS = 5


def _remote(n: int, skip: int | None = None, moved: int | None = None) -> dict:
    """n remote pods of APPS apps on 10.99.0.0/16; `skip`: one pod gone;
    `moved`: one pod with another app's identity."""
    out = {}
    for i in range(n):
        if i == skip:
            continue
        app = (i + 1) % APPS if i == moved else i % APPS
        out[IPv4Address(f"10.99.{i // 250}.{i % 250 + 1}")] = (40000 + app, identity_labels({"app": f"r{app}"}))
    return out


def _kernel(dp) -> dict:
    return dp.maps.read_ipcache()


def _want(state) -> dict:
    return {ip_network(n): i for n, i in state.ipcache.items()}


def test_a_cluster_event_writes_only_what_moved_and_the_kernel_holds_the_compiled_ipcache(dp_node):
    dp = dp_node.dp
    c = Compiler()
    before = _remote(2000)
    c.set_remote(before)
    s1 = c.compile()
    dp.resync()
    dp.apply(s1)
    assert _kernel(dp) == _want(s1)

    # Written behind the agent's back: only a read-back finds it.
    intruder = IPv4Network("10.98.0.1/32")
    dp.maps.write_ipcache(intruder, 40003)

    after = _remote(2001, skip=7, moved=11)  # one new pod, one gone, one changed identity
    changed = frozenset(a for a in set(before) | set(after) if before.get(a) != after.get(a))
    c.set_remote(after, changed=changed)
    s2 = c.compile()
    res = dp.apply(s2)
    assert (res.ipcache_written, res.ipcache_deleted) == (2, 1)
    kernel = _kernel(dp)
    assert kernel.pop(intruder) == 40003, "the delta write did not read the map back"
    assert kernel == _want(s2)

    # The periodic read-back (here: asked for) repairs it.
    dp.resync()
    res = dp.apply(s2)
    assert (res.ipcache_written, res.ipcache_deleted) == (0, 1)
    assert _kernel(dp) == _want(s2)


def test_a_failed_apply_makes_the_next_one_read_everything_back(dp_node, monkeypatch):
    dp = dp_node.dp
    c = Compiler()
    before = _remote(300)
    c.set_remote(before)
    s1 = c.compile()
    dp.resync()
    dp.apply(s1)
    after = _remote(300, skip=3)
    c.set_remote(after, changed=frozenset({next(a for a in before if a not in after)}))
    s2 = c.compile()

    real = dp.maps.delete_ipcache

    def broken(net):
        raise OSError("injected")

    monkeypatch.setattr(dp.maps, "delete_ipcache", broken)
    with pytest.raises(OSError):
        dp.apply(s2)
    monkeypatch.setattr(dp.maps, "delete_ipcache", real)
    stray = IPv4Network("10.98.0.2/32")
    dp.maps.write_ipcache(stray, 40001)
    res = dp.apply(s2)  # the same state again: nothing moved since it, yet everything is compared
    assert res.ipcache_deleted == 2  # the pod that went, and the stray entry
    assert _kernel(dp) == _want(s2)
