"""The offline policy commands' parse cache (agent/cli/parse_cache.py): the
same answers as parsing, a changed file parsed again, a warm `policy trace`
without pydantic, and nothing loaded from a cache another user could
have written."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import parse_cache
from agent.cli.parse_cache import ParseCache, code_fingerprint, default_dir, load_policies
from policy.load import LoadResult, load_paths

ROOT = Path(__file__).resolve().parents[2]
STARWARS = ROOT / "examples" / "starwars"

TRACE = [
    "policy", "trace", "--src", "labels:org=empire,class=tiefighter", "--dst", "labels:org=empire,class=deathstar",
    "--dport", "80", "-o", "json",
]

L3 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: %s}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


class Counting:
    """The parser behind the cache, counting its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, text: str, source: str, is_json: bool) -> LoadResult:
        from policy.load import load_text

        self.calls.append(source)
        return load_text(text, source, is_json=is_json)


def summary(res: LoadResult) -> tuple:
    return ([(p.key, p.source, p.doc, repr(p)) for p in res.policies], [str(e) for e in res.errors], res.warnings, res.files)


def cache(tmp_path: Path) -> tuple[ParseCache, Counting]:
    parse = Counting()
    return ParseCache(tmp_path / "cache", parse), parse


def test_a_second_load_is_answered_from_the_cache_with_the_same_result(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {nope: 1}\n")
    paths = [STARWARS, bad]
    plain = load_paths(paths)
    assert plain.errors and plain.policies  # both kinds of result go through the cache
    c, parse = cache(tmp_path)
    with c:
        first = load_paths(paths, c)
        n = len(parse.calls)
        second = load_paths(paths, c)
    assert n == 4 and len(parse.calls) == n  # three starwars files and bad.yaml, parsed once
    assert summary(first) == summary(second) == summary(plain)
    assert (c.hits, c.misses) == (4, 4)


def test_an_edited_file_is_parsed_again_and_the_trace_follows_it(tmp_path: Path, capsys, monkeypatch) -> None:
    import json

    from agent.cli import main

    monkeypatch.setenv("CILIATE_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "p.yaml"

    def verdict() -> str:
        assert main([*TRACE, "--policies", str(f)]) in (0, 1)
        return json.loads(capsys.readouterr().out)["verdict"]

    f.write_text(L3 % "empire")
    assert verdict() == "allowed"
    assert verdict() == "allowed"  # from the cache
    f.write_text(L3 % "alliance")  # same size, same name: only the text differs
    assert verdict() == "denied"
    f.write_text(L3 % "empire")
    assert verdict() == "allowed"


def test_the_same_text_under_another_name_keeps_its_own_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("kind: Nope\n")
    b.write_text("kind: Nope\n")
    c, _ = cache(tmp_path)
    with c:
        ra = load_paths([a], c)
        rb = load_paths([b], c)
    assert [e.file for e in ra.errors] == [str(a)] and [e.file for e in rb.errors] == [str(b)]


def test_a_warm_trace_imports_neither_pydantic_nor_yaml(tmp_path: Path) -> None:
    probe = (
        "import sys, json; from agent.cli import main; rc = main(sys.argv[1:]); "
        "print(json.dumps(sorted(m for m in ('pydantic', 'yaml') if m in sys.modules)), file=sys.stderr)"
    )
    env = {**os.environ, "CILIATE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    runs = [
        subprocess.run([sys.executable, "-c", probe, *TRACE, "--policies", str(STARWARS)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stderr.splitlines()[-1] == '["pydantic", "yaml"]'
    assert runs[1].stderr.splitlines()[-1] == "[]"


def test_off_parses_every_time_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CILIATE_CACHE_DIR", "off")
    assert default_dir() is None
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_policies([STARWARS]).ok
    assert not any(tmp_path.iterdir())


def test_the_default_place_is_the_users_cache_directory(monkeypatch) -> None:
    monkeypatch.delenv("CILIATE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert default_dir() == Path("/x/cache/ciliate/parsed")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert default_dir() == Path("/home/u/.cache/ciliate/parsed")


# -- what another user could have put there -----------------------------------


class Planted:
    """Unpickling this creates `marker`: proof that an entry was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_everywhere(c: ParseCache, tmp_path: Path, paths: list[Path], marker: Path) -> None:
    """Run once to learn the entry names, then replace every entry with a
    pickle that touches `marker` when loaded."""
    with c:
        load_paths(paths, c)
    for entry in c.directory.glob("*.pickle"):
        entry.write_bytes(pickle.dumps(Planted(marker)))


def test_a_directory_others_may_write_is_not_used(tmp_path: Path) -> None:
    c, parse = cache(tmp_path)
    marker = tmp_path / "loaded"
    plant_everywhere(c, tmp_path, [STARWARS], marker)
    os.chmod(c.directory, 0o777)
    again, parse2 = ParseCache(c.directory, Counting()), None
    with again:
        res = load_paths([STARWARS], again)
    assert res.ok and len(res.policies) == 1
    assert not marker.exists()
    assert again.hits == 0


@pytest.mark.parametrize("how", ["group-readable entry", "symbolic link"])
def test_an_entry_that_is_not_a_private_file_is_not_loaded(tmp_path: Path, how: str) -> None:
    c, _ = cache(tmp_path)
    marker = tmp_path / "loaded"
    plant_everywhere(c, tmp_path, [STARWARS], marker)
    for entry in c.directory.glob("*.pickle"):
        if how == "group-readable entry":
            os.chmod(entry, 0o640)
        else:
            target = tmp_path / f"elsewhere-{entry.name}"
            entry.rename(target)
            os.chmod(target, 0o600)
            entry.symlink_to(target)
    again = ParseCache(c.directory, Counting())
    with again:
        res = load_paths([STARWARS], again)
    assert res.ok and len(res.policies) == 1 and again.hits == 0
    assert not marker.exists()


def test_a_private_entry_is_trusted_which_is_why_the_rest_matters(tmp_path: Path) -> None:
    """The control for the two tests above: the same planted entries, left
    private, are loaded (so the checks, not an accident, kept them out)."""
    c, _ = cache(tmp_path)
    marker = tmp_path / "loaded"
    plant_everywhere(c, tmp_path, [STARWARS], marker)
    with ParseCache(c.directory, Counting()) as again:
        load_paths([STARWARS], again)
    assert marker.exists()


def test_a_corrupt_entry_is_a_miss_and_is_replaced(tmp_path: Path) -> None:
    c, parse = cache(tmp_path)
    with c:
        want = summary(load_paths([STARWARS], c))
    for entry in c.directory.glob("*.pickle"):
        entry.write_bytes(b"\x80\x05not a pickle")
    again = ParseCache(c.directory, Counting())
    with again:
        assert summary(load_paths([STARWARS], again)) == want
        assert again.misses == 3
        assert summary(load_paths([STARWARS], again)) == want
        assert again.hits == 3


def test_changed_parsing_code_changes_every_name(tmp_path: Path) -> None:
    code = tmp_path / "policy"
    (code / "api").mkdir(parents=True)
    (code / "api" / "rule.py").write_text("A = 1\n")
    (code / "parse.py").write_text("B = 1\n")
    before = code_fingerprint(code)
    assert code_fingerprint(code) == before
    (code / "api" / "rule.py").write_text("A = 22\n")
    assert code_fingerprint(code) != before


def test_the_cache_keeps_at_most_its_bound(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(parse_cache, "MAX_ENTRIES", 8)
    c, _ = cache(tmp_path)
    files = []
    for i in range(12):
        f = tmp_path / f"p{i}.yaml"
        f.write_text(L3 % f"org{i}")
        files.append(f)
    with c:
        for f in files:
            load_paths([f], c)
    kept = list(c.directory.glob("*.pickle"))
    assert 4 <= len(kept) <= 8
    assert not list(c.directory.glob(".*.tmp"))
