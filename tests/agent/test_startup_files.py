"""Files the agent reads at start-up: damage never ends in a bare UnicodeDecodeError.

`datapath_config.h` and `layout_check.h` are generated: a damaged one is
rewritten like any other outdated one. A policy file names itself, the
first byte that is not UTF-8 and its offset.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.load import load_paths
from redirect import config
from redirect.maps import MapSizes


@pytest.mark.parametrize("name", [config.SHARED_HEADER, config.LAYOUT_CHECK])
def test_a_damaged_generated_header_is_rewritten(tmp_path: Path, name: str) -> None:
    cfg = config.SharedConfig(Path("/sys/fs/bpf/tc/globals"), MapSizes())
    hdr, digest = config.write_shared(cfg, tmp_path)
    good = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(b"/*\xff\xfe not UTF-8 */\n")
    again, digest_again = config.write_shared(cfg, tmp_path)
    assert (again, digest_again) == (hdr, digest)
    assert (tmp_path / name).read_bytes() == good


def test_a_policy_file_that_is_not_utf8_is_named_with_the_byte(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_bytes(b"kin\xffd: x\n")
    assert [str(e) for e in load_paths([f]).errors] == [f"{f}: cannot read: not UTF-8 (byte 0xff at offset 3)"]
