"""CLI start-up benchmark: the wall time of one offline `ciliate policy trace`
as a user runs it: the venv's `ciliate` console script in a fresh process
each time (interpreter, imports, loading examples/starwars, compile, trace,
exit), side by side with two baselines measured in the same run and
interleaved with it (who goes first rotates), so a busy machine slows all
all alike. The trace runs three ways:

  ciliate policy trace        the files parsed by a trace before (the parse
                              cache, agent/cli/parse_cache.py, answers)
  ... (changed files)         an empty cache each time: every file parsed,
                              and kept (what the first trace after an edit pays)
  ... (no parse cache)        CILIATE_CACHE_DIR=off

and the baselines:

  python -c pass              the interpreter's own start (site included)
  pydantic.BaseModel + yaml   `import yaml; from pydantic import BaseModel`,
                              the libraries policy loading cannot do without
                              (`import pydantic` alone imports little: its
                              names load when first used)

Each figure is spawn to exit, output read. The trace must exit 0 (the flow
is allowed); any other exit stops the benchmark with its output. One
uncounted run of each first warms the page cache and writes the project's
bytecode where it is missing (as scripts/install.sh does; that run only,
PYTHONDONTWRITEBYTECODE is ignored). When the venv's installed package is
another checkout (a git worktree), the console script is pointed at this
one with PYTHONPATH.

The cache lives in a temporary directory of the benchmark's own.

Goal: `policy trace` < 200 ms median on the 2-core test machine.
Run: .venv/bin/python bench/bench_cli.py [-n 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_MS = 200.0
TRACE = "ciliate policy trace"
CHANGED = "... (changed files)"
NO_CACHE = "... (no parse cache)"
TRACE_ARGS = (
    "policy", "trace", "--policies", "examples/starwars",
    "--src", "labels:org=empire,class=tiefighter", "--dst", "labels:org=empire,class=deathstar", "--dport", "80",
)


def _env() -> tuple[dict[str, str], str]:
    """The environment to run in, and where `agent.cli` is imported from there."""
    env = dict(os.environ)
    probe = "import agent.cli.ciliate as m; print(m.__file__)"
    # -P: no current directory on sys.path, as for the console script.
    where = subprocess.run([sys.executable, "-P", "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    found = where.stdout.strip()
    if not found or not Path(found).resolve().is_relative_to(ROOT):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        return env, f"{ROOT} (PYTHONPATH; the venv's install is {found or 'missing'})"
    return env, str(Path(found).parent)


def _run(name: str, cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(
            f"bench_cli: {name} exited {proc.returncode}, expected 0: {' '.join(cmd)}\n"
            f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
        )
    return elapsed


def _row(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return f"  {name:<28} median {statistics.median(ms):6.1f}   p90 {p90:6.1f}   min {ms[0]:6.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=30, help="processes of each command (default 30)")
    args = ap.parse_args()
    script = Path(sys.prefix) / "bin" / "ciliate"
    if not script.exists():
        sys.exit(f"bench_cli: no console script at {script} (scripts/install.sh installs it)")
    env, where = _env()
    cache = Path(tempfile.mkdtemp(prefix="bench-cli-cache-"))
    try:
        return _measure(args.n, script, env, where, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _measure(n: int, script: Path, env: dict[str, str], where: str, cache: Path) -> int:
    trace = [str(script), *TRACE_ARGS]
    commands = {
        TRACE: trace,
        CHANGED: trace,
        NO_CACHE: trace,
        "baseline python -c pass": [sys.executable, "-c", "pass"],
        "pydantic.BaseModel + yaml": [sys.executable, "-c", "import yaml; from pydantic import BaseModel"],
    }
    cold = iter(range(1_000_000))

    def env_for(name: str, base: dict[str, str]) -> dict[str, str]:
        if name == TRACE:
            return {**base, "CILIATE_CACHE_DIR": str(cache / "warm")}
        if name == CHANGED:
            return {**base, "CILIATE_CACHE_DIR": str(cache / f"cold-{next(cold)}")}
        return {**base, "CILIATE_CACHE_DIR": "off"}

    warm = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for name, cmd in commands.items():
        _run(name, cmd, env_for(name, warm))
    names = list(commands)
    ms: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        for name in names[i % len(names):] + names[: i % len(names)]:
            ms[name].append(_run(name, commands[name], env_for(name, env)) * 1000)
    print(f"{n} fresh processes of each, interleaved; ciliate from {where}")
    for name in names:
        print(_row(name, ms[name]))
    median = statistics.median(ms[TRACE])
    changed = statistics.median(ms[CHANGED])
    print(
        f"  goal: {TRACE} < {GOAL_MS:.0f} ms median: {'met' if median < GOAL_MS else 'NOT MET'} ({median:.1f} ms; "
        f"{changed:.1f} ms when every file changed since the last trace)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
