"""`make compose-demo` against a real Docker engine this test starts and stops.

The engine (tests/compose/engine.py) runs in a network namespace of its own
with its data under a temp directory; the base image the Dockerfile names is
built here with mmdebstrap and imported, since no registry is reachable. The
test then checks what a user would: the table says 12 of 12 (the last stage
over IPv6: the apps are dual-stack) with the 403 body
`Access denied`, and afterwards nothing of the demo is left: no containers,
volumes or images in the engine, no change to the host's links, ip rules or
/sys/fs/bpf, and (after the engine stops) no mounts, namespace or process.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.compose.engine import ROOT, Engine, EngineUnavailable

# The build and the demo are two tests: only the demo compares the host's
# view before and after, so only it runs alone (the exclusive lock). The
# build (mmdebstrap, apt and pip inside the image: most of the time) leaves
# nothing in the host's view and may run beside the other kernel tests.
pytestmark = [pytest.mark.privileged, pytest.mark.timeout(420)]


def host_view() -> dict[str, str]:
    def run(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True).stdout

    bpffs = Path("/sys/fs/bpf")
    return {
        "links": run("ip", "-o", "link", "show"),
        "rules": run("ip", "rule", "show"),
        "routes": run("ip", "route", "show", "table", "all"),
        "bpffs": "\n".join(sorted(str(p) for p in bpffs.rglob("*"))) if bpffs.is_dir() else "",
        # The engine's own namespace lives until close(), which checks its removal.
        "netns": "".join(ln for ln in run("ip", "netns", "list").splitlines(True) if not ln.startswith("cildock-")),
        "var_lib_docker": str(Path("/var/lib/docker").exists()),
    }


@pytest.fixture(scope="module")
def engine():
    try:
        eng = Engine()
    except EngineUnavailable as exc:
        pytest.skip(f"no Docker engine can run here: {exc}")
    try:
        yield eng
    finally:
        problems = eng.close()
        assert not problems, problems


@pytest.fixture(scope="module")
def built(engine: Engine) -> str:
    """`docker-compose build` on the engine; the base image's tag."""
    t0 = time.monotonic()
    # Building fetches Debian packages and wheels, so only the build runs with
    # the engine in the host's namespace (no bridge, no iptables: it adds no
    # link, rule or route); no container of the demo runs then.
    engine.start(host_network=True)
    base = engine.import_base_image()
    build = subprocess.run(["docker-compose", "build"], cwd=ROOT, env=engine.env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    engine.stop()
    print(f"base image and build: {time.monotonic() - t0:.0f}s")
    # Other kernel tests may add links meanwhile; none of the engine's kind.
    links = [ln.split(":")[1].strip() for ln in host_view()["links"].splitlines()]
    assert not [n for n in links if n.startswith(("docker", "br-"))], links
    assert not Path("/var/lib/docker").exists()
    return base


def test_compose_build_makes_the_demo_image(engine: Engine, built: str) -> None:
    engine.start()
    try:
        tags = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        assert "ciliate/agent:dev" in tags and built in tags, tags
        # The image's entry point is the `ciliate` command of this checkout.
        out = engine.docker("run", "--rm", "--network", "none", "ciliate/agent:dev", "policy", "validate", "--help", timeout=120)
        assert "usage: ciliate policy validate" in out.stdout, out.stdout
    finally:
        engine.stop()


@pytest.mark.exclusive
def test_compose_demo_runs_and_leaves_nothing_behind(engine: Engine, built: str) -> None:
    base = built
    before = host_view()
    engine.start()  # the demo's engine: its own network namespace
    t0 = time.monotonic()

    demo = subprocess.run(
        ["make", "-s", "-o", "install", "compose-demo", "COMPOSE=docker-compose"],
        cwd=ROOT, env=engine.env, capture_output=True, text=True, timeout=300,
    )
    out = demo.stdout + demo.stderr
    print(out)
    print(f"demo: {time.monotonic() - t0:.0f}s")
    assert demo.returncode == 0, out[-4000:]
    assert "12 of 12 requests as expected" in out
    for stage in ("3 ", "4 "):  # IPv4, then IPv6
        (denied,) = [ln for ln in out.splitlines() if ln.startswith(stage) and "PUT /v1/exhaust-port" in ln]
        assert denied.split()[-2:] == ["Access", "denied"] and " 403 " in denied
    (dropped,) = [ln for ln in out.splitlines() if ln.startswith("2 ") and "xwing" in ln]
    assert "dropped   dropped" in dropped
    (dropped6,) = [ln for ln in out.splitlines() if ln.startswith("4 ") and "xwing" in ln]
    assert dropped6.split()[1:5] == ["xwing", "POST", "/v1/request-landing", "v6"] and "dropped   dropped" in dropped6

    # `down -v` left no container or volume; the images are the user's to keep.
    assert engine.docker("ps", "-aq").stdout.strip() == ""
    assert engine.docker("volume", "ls", "-q").stdout.strip() == ""
    assert not (ROOT / "deploy" / "policies" / "starwars.yaml").exists()
    engine.docker("rmi", "ciliate/agent:dev", base)
    engine.docker("image", "prune", "-f")
    assert engine.docker("images", "-aq").stdout.strip() == ""

    engine.stop()
    assert host_view() == before


def test_close_removes_the_engine_namespace_and_directory() -> None:
    """The fixture's teardown, checked on its own: nothing stays below the temp dir."""
    try:
        eng = Engine()
    except EngineUnavailable as exc:
        pytest.skip(f"no Docker engine can run here: {exc}")
    eng.start()
    pid = eng.proc.pid
    assert eng.close() == []
    assert not eng.dir.exists()
    assert eng.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
