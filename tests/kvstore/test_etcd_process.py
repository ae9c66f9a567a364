"""The project's one etcd launcher (demo/etcd_process.py) on its own: ready
means etcd said so, an etcd that exits fails start() at once with its log,
and close() leaves nothing behind."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from demo.etcd_process import EtcdProcess, EtcdStartError, etcd_missing_reason

pytestmark = pytest.mark.etcd


@pytest.fixture(autouse=True)
def _etcd_installed() -> None:
    if (reason := etcd_missing_reason()) is not None:
        pytest.skip(reason)


def test_started_means_serving_on_loopback_and_close_removes_everything() -> None:
    etcd = EtcdProcess()
    try:
        etcd.start()
        assert etcd.client_url.startswith("http://127.0.0.1:")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{etcd.client_url}/health", timeout=2) as r:
            assert json.load(r)["health"] == "true"
        proc = etcd.proc
    finally:
        etcd.close()
    assert proc is not None and proc.poll() is not None
    assert not etcd.dir.exists()


def test_an_etcd_that_exits_fails_start_at_once_with_its_log() -> None:
    etcd = EtcdProcess(extra_args=["--no-such-flag"])
    began = time.monotonic()
    try:
        with pytest.raises(EtcdStartError, match=r"did not become ready; log tail:\n[\s\S]*Usage"):  # etcd's own words
            etcd.start(timeout=30)
        assert time.monotonic() - began < 10  # the exit ended the wait, not the timeout
        assert etcd.proc is None
    finally:
        etcd.close()
    assert not etcd.dir.exists()
