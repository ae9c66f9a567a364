"""Fixtures for the datapath kernel tests.

`dp_node` is a module-scoped node (pods a, b, c) with one Datapath whose
pins live in a per-run bpffs directory and whose state lives in tmp; every
test gets it with conntrack flushed and an empty policy applied. Tests that
need their own install (adoption, tiny maps, broken programs) use
`fresh_install`. Everything is removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.datapath.support import Ep
from tests.kernelnode import Node, PodSpec, kernel_node

PODS = [PodSpec("a", "10.201.0.2"), PodSpec("b", "10.201.0.3"), PodSpec("c", "10.201.0.9")]
IDENTITIES = {"a": 256, "b": 257, "c": 258}
ENDPOINT_IDS = {"a": 11, "b": 12, "c": 13}


@dataclass
class Install:
    node: Node
    pin_dir: Path
    state_dir: Path
    dp: object  # redirect.datapath.Datapath

    def ep(self, pod: str) -> Ep:
        return Ep(ENDPOINT_IDS[pod], IDENTITIES[pod], self.node.pods[pod])


@contextlib.contextmanager
def make_install(attach: tuple[str, ...] = ("a", "b"), **dp_kwargs) -> Iterator[Install]:
    from redirect.datapath import Datapath

    pin_dir = Path(f"/sys/fs/bpf/cdp-test-{secrets.token_hex(3)}")
    state_dir = Path(tempfile.mkdtemp(prefix="cdp-state-"))
    with kernel_node(PODS) as node:
        inst: Install | None = None
        try:
            inst = Install(node, pin_dir, state_dir, Datapath(pin_dir, state_dir, netns=node.netns, **dp_kwargs))
            for name in attach:
                p = node.pods[name]
                inst.dp.attach_endpoint(ENDPOINT_IDS[name], p.host_ifname, p.ip, IDENTITIES[name])
            yield inst
        finally:
            try:
                if inst is not None:
                    inst.dp.teardown()  # tests may swap in an adopting Datapath
            finally:
                shutil.rmtree(pin_dir, ignore_errors=True)
                shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def _shared_install() -> Iterator[Install]:
    with make_install() as inst:
        inst.dp.setup_proxy_plumbing()
        yield inst


@pytest.fixture
def dp_node(_shared_install: Install) -> Iterator[Install]:
    _shared_install.dp.maps.flush_ct()
    yield _shared_install
    _shared_install.dp.maps.flush_ct()


@pytest.fixture
def fresh_install():
    return make_install
