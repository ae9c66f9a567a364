"""Suite-wide rules.

- `@pytest.mark.privileged` tests need root and kernel features; a non-root
  run skips them with the reason. Under pytest-xdist kernel tests run in
  lanes (see LANES); `@pytest.mark.exclusive` ones run with no other kernel
  test beside them. Under CI=true a skip of any kind is turned
  into a failure, so a missing install step cannot hide behind a green run.
- Every test must leave no asyncio task behind.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The offline policy commands keep parsed files in a cache
# (agent/cli/parse_cache.py), by default under the user's home: each test
# process, and every `ciliate` it starts, uses one of its own instead, gone
# when the process ends.
_PARSE_CACHE = tempfile.mkdtemp(prefix="ciliate-test-parse-cache-")
os.environ["CILIATE_CACHE_DIR"] = _PARSE_CACHE


# Under pytest-xdist (`make test`: -n 2 --dist loadscope) the kernel tests run
# in lanes, each lane on one worker and in turn: the tests of one directory
# share their conftest's node prefix and fixtures, and the cluster tests and
# the cluster demo each run an underlay. Other tests go by module, as
# loadscope does; the kernel tests of different lanes and modules live in
# namespaces of their own and may run side by side. The compose test shares
# nothing with the others (its engine and namespace are its own), so it is a
# module like any other: either worker may take it.
# (pytest-xdist's own --dist loadgroup does not group under pytest 9: it
# rewrites item._nodeid, which pytest 9 no longer reads.)
LANES = {"reliability": "lane-c", "cluster": "lane-b", "demo": "lane-b", "datapath": "lane-a"}


def work_unit(nodeid: str) -> str:
    """The unit a worker takes whole: a kernel lane, else the test's module."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in LANES:
        return LANES[parts[1]]
    return path


# Longest first: each unit's seconds in the last whole run with the same
# markers (`make test`, `make test-fast`; kept in pytest's cache,
# .pytest_cache/) decide the order units are handed out in, so a long unit
# does not start last and leave the other worker idle at the end. A fresh
# checkout (CI) has no cache, and a unit may be new to it: then the seconds of
# each of its modules in tests/module-seconds.json (a whole run's, committed;
# only the order depends on them, so a stale figure costs time, never a
# result) add up to its time. Units with no time at all follow in xdist's
# order (collection order, which would hand the longest lanes out last). A run of some files or of `-k` records
# nothing: its units would look shorter than they are.
MODULE_SECONDS = Path(__file__).with_name("module-seconds.json")


def _unit_seconds_key(config: pytest.Config) -> str:
    marks = config.getoption("markexpr", "") or ""
    return "ciliate/unit-seconds/" + (hashlib.sha1(marks.encode()).hexdigest()[:12] if marks else "all")


def _whole_run(config: pytest.Config) -> bool:
    return (
        config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and not config.getoption("keyword", "")
        and not config.getoption("lf", False)
        and not config.getoption("deselect", None)
    )


class _UnitSeconds:
    """Adds up each unit's setup, call and teardown time (on the controller)
    and stores it when a whole run ends."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        unit = work_unit(report.nodeid)
        self.seconds[unit] = self.seconds.get(unit, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.seconds:
            key = _unit_seconds_key(self.config)
            known = self.config.cache.get(key, {})
            known.update({u: round(s, 2) for u, s in self.seconds.items()})
            self.config.cache.set(key, known)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_PARSE_CACHE, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and getattr(config, "cache", None) is not None and _whole_run(config):
        config.pluginmanager.register(_UnitSeconds(config), "ciliate-unit-seconds")


def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201 - xdist's hook
    from xdist.scheduler import LoadScopeScheduling

    cache = getattr(config, "cache", None)
    seconds: dict[str, float] = cache.get(_unit_seconds_key(config), {}) if cache is not None else {}
    by_module: dict[str, float] = json.loads(MODULE_SECONDS.read_text())

    def unit_seconds(unit: str, nodeids: Iterable[str]) -> float:
        if unit in seconds:
            return seconds[unit]
        return sum(by_module.get(m, 0.0) for m in {n.split("::", 1)[0] for n in nodeids})

    class KernelLanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

        def _assign_work_unit(self, node) -> None:  # noqa: ANN001 - xdist's WorkerController
            longest = max(self.workqueue, key=lambda unit: unit_seconds(unit, self.workqueue[unit]))
            self.workqueue.move_to_end(longest, last=False)
            super()._assign_work_unit(node)

    return KernelLanes(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="privileged: needs root, network namespaces, tc and bpf")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


KERNEL_LOCK = Path("/tmp/ciliate-kernel.lock")  # also what `flock` around a kernel benchmark takes


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Whose turn the kernel is. Kernel tests of different lanes live in
    namespaces of their own and may run side by side (a shared lock), but an `exclusive` one
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
