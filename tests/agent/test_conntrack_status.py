"""`ciliate status` shows how full the conntrack table is, read when asked,
and warns at 90 % (the kernel side is the fake datapath; the privileged
flood test in tests/datapath/test_conntrack_pressure.py drives the real one)."""

from __future__ import annotations

import json

import pytest

from agent.core.map_pressure import conntrack_status
from agent.core.ports import DatapathCounters, MapFill
from tests.agent.conftest import Rig
from tests.agent.test_api import run_cli, served  # noqa: F401  (fixture)


@pytest.mark.parametrize(
    "entries, capacity, percent, warns",
    [
        pytest.param(0, 65536, 0.0, False, id="empty"),
        pytest.param(58981, 65536, 90.0, False, id="just-below-90"),
        pytest.param(58983, 65536, 90.0, True, id="at-90"),
        pytest.param(65400, 65536, 99.8, True, id="flooded"),
    ],
)
def test_conntrack_fill_and_warning(entries, capacity, percent, warns):
    st = conntrack_status(DatapathCounters(maps=(MapFill("ciliate_ct", entries, capacity),)))
    assert st is not None
    assert (st.entries, st.capacity, st.percent) == (entries, capacity, percent)
    assert bool(st.warning) is warns
    if warns:
        assert "ciliate_bpf_map_pressure" in st.warning


def test_no_conntrack_reading_no_line():
    assert conntrack_status(DatapathCounters()) is None


async def test_status_reads_the_fill_when_asked_and_warns(served, rig: Rig, capsys) -> None:  # noqa: F811
    _, sock = served
    s = ["--socket", str(sock)]
    rig.datapath.map_capacities["ciliate_ct"] = 4096
    rig.datapath.map_entries["ciliate_ct"] = 1024
    code, out, _ = await run_cli(["status", *s], capsys)
    assert code == 0
    assert "Conntrack:       1024/4096 entries (25.0 %)" in out.splitlines()
    assert "WARNING" not in out

    rig.datapath.map_entries["ciliate_ct"] = 4000  # no scrape in between: status reads the kernel itself
    code, out, _ = await run_cli(["status", *s], capsys)
    assert code == 0  # pressure is a warning, not ill health
    lines = out.splitlines()
    assert "Conntrack:       4000/4096 entries (97.7 %)" in lines
    assert any(line.startswith("WARNING:") and "98% full" in line for line in lines), out

    code, out, _ = await run_cli(["status", *s, "-o", "json"], capsys)
    ct = json.loads(out)["conntrack"]
    assert (ct["entries"], ct["capacity"], ct["percent"]) == (4000, 4096, 97.7) and ct["warning"]


def test_each_familys_table_fills_on_its_own_and_the_fuller_one_is_reported():
    maps = (MapFill("ciliate_ct", 1000, 65536), MapFill("ciliate_ct6", 60000, 65536))
    st = conntrack_status(DatapathCounters(maps=maps))
    assert st is not None and st.entries == 60000 and st.warning is not None
    assert "(IPv6)" in st.warning and 'map_name="ciliate_ct6"' in st.warning
