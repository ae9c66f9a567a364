"""Suite-wide rules.

- `@pytest.mark.privileged` tests need root and kernel features; a non-root
  run skips them with the reason. Under pytest-xdist kernel tests run in two
  lanes (one worker each, see _kernel_lane); `@pytest.mark.exclusive` ones
  run with no other kernel test beside them. Under CI=true a skip of any kind is turned
  into a failure, so a missing install step cannot hide behind a green run.
- Every test must leave no asyncio task behind.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# The two lanes, about equally long (~8 min each on 2 loaded cores).
LANE_B = ("reliability", "cluster", "demo")


def _kernel_lane(item: pytest.Item) -> str:
    parts = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts
    return "kernel-b" if parts and parts[0] in LANE_B else "kernel-a"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = os.geteuid() == 0
    skip = pytest.mark.skip(reason="privileged: needs root, network namespaces, tc and bpf")
    for item in items:
        if "privileged" not in item.keywords:
            continue
        if not root:
            item.add_marker(skip)
        # Under pytest-xdist (--dist loadgroup) kernel tests run in two lanes,
        # each on one worker and in turn. The lanes share no namespace name,
        # subnet of an underlay, or fixture: a directory's tests share their
        # conftest's node prefix, and the cluster tests and the cluster demo
        # each run an underlay, so each of those stays within one lane.
        item.add_marker(pytest.mark.xdist_group(_kernel_lane(item)))


KERNEL_LOCK = Path("/tmp/ciliate-kernel.lock")  # also what `flock` around a kernel benchmark takes


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Whose turn the kernel is. The two lanes' tests live in namespaces of
    their own and may run side by side (a shared lock), but an `exclusive` one
    compares the host's view before and after, so it runs alone (the
    exclusive lock).
    Held around setup, call and teardown, module fixtures included, and
    outside pytest-timeout's clock."""
    if "privileged" not in item.keywords or os.geteuid() != 0:
        yield
        return
    with open(KERNEL_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if "exclusive" in item.keywords else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
