"""The layering in pyproject's [tool.importlinter] holds: policy is pure and
data flows one way (policy -> renderers -> agent)."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def import_circles(package: str) -> list[str]:
    """Every import of one module of `package` by another from which a chain
    of imports (lazy ones too) leads back to the importer."""
    import grimp

    graph = grimp.build_graph("agent", "policy", "xds", "redirect", "sidecar", "demo")
    circles = []
    for module in sorted(graph.find_children(package) | graph.find_descendants(package)):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(package) and graph.chain_exists(imported, module):
                circles.append(f"{module} -> {imported} -> ... -> {module}")
    return circles


def test_no_import_circle_in_the_agent():
    """No two agent modules import each other, directly or through others
    (api, daemon and openapi once did, hidden behind lazy imports)."""
    assert import_circles("agent") == []


def test_no_import_circle_in_the_demo():
    """No two demo modules import each other (demo/run.py and cluster_run.py
    once did: one for the stage constants, the other to dispatch `--nodes`)."""
    assert import_circles("demo") == []


def test_the_image_copies_every_package_the_project_installs():
    """deploy/Dockerfile copies the packages one by one from a build context
    .dockerignore lists: a new package left out of either builds no image, or
    one whose agent cannot start (the compose demo and the DaemonSet)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M))
    assert packages <= copied, f"deploy/Dockerfile does not copy {sorted(packages - copied)}"
    # .dockerignore excludes everything but what it names: the build context must hold them.
    in_context = set(re.findall(r"^!(\w+)/$", (ROOT / ".dockerignore").read_text(), re.M))
    assert packages <= in_context, f".dockerignore leaves {sorted(packages - in_context)} out of the build context"
