"""The compiler runs in a child process (redirect/compile_worker.py): its
errors come back whole, and the child runs our code only, whatever
directory the agent was started in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from redirect import loader
from redirect.errors import ProgramLoadError


@pytest.mark.privileged
def test_a_module_planted_in_the_working_directory_never_runs(tmp_path: Path, monkeypatch) -> None:
    planted = tmp_path / "cwd" / "redirect"
    planted.mkdir(parents=True)
    marker = tmp_path / "planted-ran"
    (planted / "__init__.py").write_text("")
    (planted / "compile_worker.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    monkeypatch.chdir(planted.parent)
    source, header = tmp_path / "broken.c", tmp_path / "config.h"
    source.write_text("int from_container(struct __sk_buff *skb) { return undeclared_thing; }\n")
    header.write_text("")
    with pytest.raises(ProgramLoadError) as err:
        loader.load_functions(7, header, source, ("from_container",))
    assert "undeclared_thing" in err.value.message, "the compiler's own words come back"
    assert not marker.exists(), "the planted module ran"
    assert os.getcwd() == str(planted.parent)
