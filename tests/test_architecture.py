"""The layering in pyproject's [tool.importlinter] holds: policy is pure and
data flows one way (policy -> renderers -> agent)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_import_circle_in_the_agent():
    """No two agent modules import each other, directly or through others
    (api, daemon and openapi once did, hidden behind lazy imports)."""
    import grimp

    graph = grimp.build_graph("agent", "policy", "xds", "redirect", "sidecar", "demo")
    circles = []
    for module in sorted(graph.find_children("agent") | graph.find_descendants("agent")):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("agent") and graph.chain_exists(imported, module):
                circles.append(f"{module} -> {imported} -> ... -> {module}")
    assert circles == []
