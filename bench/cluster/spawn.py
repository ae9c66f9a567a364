"""Starting the benchmark's child processes: each role is the entry script
run again with --role, so every part has its own RSS and CPU figures."""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The children re-run the entry script, not a module of this package: its
# argument parser is the one place that knows every role's flags.
ENTRY = ROOT / "bench" / "bench_cluster.py"


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_child(role: str, a: argparse.Namespace, root: Path, timeout: float, **extra: object) -> dict:
    """Run the entry script in `role`; its last stdout line is 'RESULT <json>'."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{role}-", dir=root))
    cmd = [sys.executable, str(ENTRY), "--role", role, "--tmp", str(tmp), "--pods", str(a.pods),
           "--pods-per-identity", str(a.pods_per_identity), "--churn", str(a.churn), "--adds", str(a.adds),
           "--local-adds", str(a.local_adds), "--add-rate", str(a.add_rate), "--alloc", str(a.alloc), "--seed", str(a.seed),
           "--sync-timeout", str(a.sync_timeout)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=die_with_parent)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{role} child failed (exit {proc.returncode}); see its stderr above")
    return json.loads(lines[-1][len("RESULT "):])
