"""--proxy-upstream-ports and --cgroup-root: what the agent accepts, and what
it says about a range it refuses, before the kernel is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from redirect.upstream_ports import PortRange, find_cgroup2


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("61000", "is not a port range LO-HI"),
        ("65535-61000", "1024 <= LO <= HI <= 65535"),
        ("80-2000", "1024 <= LO <= HI <= 65535"),
        ("61000-61100", "101 ports is too few"),
        ("a-b", "is not a port range"),
    ],
)
def test_a_wrong_range_says_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        PortRange.parse(text)


def test_a_range_parses_and_knows_its_neighbours() -> None:
    r = PortRange.parse(" 61000-65535 ")
    assert (r.lo, r.hi, r.size, str(r)) == (61000, 65535, 4536, "61000-65535")
    assert r.overlaps(PortRange(65535, 65535)) and not r.overlaps(PortRange(32768, 60999))


def test_the_whole_cgroup2_hierarchy_is_found_not_a_container_subtree() -> None:
    mountinfo = "\n".join([
        "30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw",
        "31 30 0:27 /docker/abc /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw",  # a subtree: not it
        "32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
        "33 25 0:27 / /run/ciliate/cgroupv2 rw - cgroup2 none rw",
    ])
    assert find_cgroup2(mountinfo) == Path("/run/ciliate/cgroupv2")
    assert find_cgroup2("30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw") is None


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--proxy-upstream-ports", "61000"], "--proxy-upstream-ports '61000' is not a port range LO-HI"),
        (["--proxy-upstream-ports", "15000-20000"], "overlaps the proxy's listener ports 10000-20000"),
    ],
    ids=["not-a-range", "proxy-ports"],
)
def test_a_wrong_upstream_range_is_named_before_the_kernel_is_touched(
    agent_cli, tmp_path: Path, flags: list[str], says: str,
) -> None:
    out = agent_cli(tmp_path, *flags)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "bpf").exists(), "the kernel side was touched before the flags were checked"
