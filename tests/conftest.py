"""Suite-wide rules.

- `@pytest.mark.privileged` tests need root and kernel features; a non-root
  run skips them with the reason. Under CI=true a skip of any kind is turned
  into a failure, so a missing install step cannot hide behind a green run.
- Every test must leave no asyncio task behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="privileged: needs root, network namespaces, tc and bpf")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which is a failure: {reason}"


@pytest.fixture(autouse=True)
async def _no_leftover_tasks():
    """Fail a test that leaves asyncio tasks running (async tests only)."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    if left:
        for t in left:
            t.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        pytest.fail(f"test left {len(left)} asyncio task(s) running: {[t.get_coro() for t in left]}")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (unix socket paths are limited to 107
    bytes, pytest's tmp_path is longer), removed after the test."""
    d = Path(tempfile.mkdtemp(prefix="cil-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
