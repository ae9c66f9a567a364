"""Fixtures for the kvstore tests: a real etcd per test (about 0.1 s to
start), and a factory of Cluster instances stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from demo.etcd_process import etcd_missing_reason
from tests.kvstore.etcd_server import EtcdServer, TcpProxy
from tests.kvstore.support import ClusterFactory


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    reason = etcd_missing_reason()
    if reason:
        pytest.skip(reason)
    with EtcdServer() as server:
        yield server


@pytest.fixture
def proxy(etcd: EtcdServer) -> Iterator[TcpProxy]:
    p = TcpProxy(etcd.client_port)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
async def clusters(etcd: EtcdServer, tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    factory = ClusterFactory(etcd.client_url, tmp_path)
    try:
        yield factory
    finally:
        await factory.stop_all()
