"""bench/bench_k8s.py without root: it starts (--help), its policy documents
are what the agent accepts on both paths (a file's YAML and an API object),
and its request tally names what the API server was asked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from demo.kubesim import RequestRecord
from policy.load import load_text

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
bench_k8s = pytest.importorskip("bench.bench_k8s")


def test_help_runs_without_root() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_k8s.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--changes" in out.stdout and "--policies" in out.stdout


@pytest.mark.parametrize("kind", ["kernel", "l7"])
def test_the_changed_policy_loads_as_a_file(kind: str) -> None:
    got = load_text(json.dumps(bench_k8s.starwars(kind)), "bench-starwars.yaml")
    assert not got.errors and len(got.policies) == 1
    assert not load_text(json.dumps(bench_k8s.unrelated(7)), "u.yaml").errors


def test_requests_are_tallied_by_who_made_them() -> None:
    cnp = bench_k8s.CNP
    log = [
        RequestRecord("POST", cnp, {}), RequestRecord("DELETE", f"{cnp}/{bench_k8s.NAME}", {}),
        RequestRecord("PATCH", f"{cnp}/{bench_k8s.NAME}/status", {}),
        RequestRecord("GET", cnp, {"watch": "true"}), RequestRecord("GET", "/api/v1/pods", {}),
    ]
    assert bench_k8s.classify(log) == {"change itself": 2, "status writes": 1, "watches": 1, "other": 1}
