"""Issue 8, defect 3: the agent with the real Envoy (kernel and compiler faked).

Envoy's admin API is a unix socket only root can open and there is no TCP
admin listener; the state directory and every file in it are root-only; and
health notices when Envoy stops serving its listeners (here: somebody POSTs
/drain_listeners), says which, and the agent brings them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from agent.adapters.envoy_proxy import XdsProxy
from agent.daemon import AgentConfig, build_agent
from agent.core.models import EndpointCreate
from sidecar.supervisor import admin_client
from tests.agent.fakes import FakeDatapath, FakeLoader, compiler_factory
from tests.xds.conftest import free_port
from xds.render import RenderParams

pytestmark = pytest.mark.envoy

CONNECT_AS_NOBODY = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(e.errno)
else:
    print("connected")
"""


class Node:
    """An agent whose proxy side is the real XdsProxy with a real Envoy, with
    one pod and one L7 policy (so Envoy has one listener, on `proxy_port`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.proxy_port = free_port()
        self.proxy = XdsProxy(self.state_dir, render_params=RenderParams.test_only_loopback())
        self.agent = build_agent(
            AgentConfig(state_dir=self.state_dir, policy_dir=root / "policies", metrics_port=None, poll_interval=3600.0, settle=0.0),
            compiler_factory=compiler_factory([]),
            loader=FakeLoader(),
            datapath=FakeDatapath(),
            proxy=self.proxy,
        )

    def prepare(self) -> None:
        (self.root / "policies").mkdir()
        policy = [{"name": "l7", "selector": {"app": "s"}, "allowFrom": {"app": "s"}, "port": 80, "l7": True}]
        (self.root / "policies" / "l7.json").write_text(json.dumps(policy))
        # The fake compiler takes its proxy port from the saved allocations:
        # a free one, not a fixed port another test may hold.
        self.state_dir.mkdir()
        (self.state_dir / "proxy_ports.json").write_text(json.dumps({"1/ingress/80": self.proxy_port}))

    async def start(self) -> None:
        await self.agent.start()
        ep = EndpointCreate(container_id="cid-s", host_ifname="lxcs", ipv4=IPv4Address("10.200.0.10"), labels={"app": "s"}, name="s")
        view, _ = await self.agent.create_endpoint(ep, wait=30)
        assert view.id == 1 and view.state.value == "ready", view
        assert self.proxy.supervisor is not None
        await self.proxy.supervisor.wait_ready(30)
        assert await self.listener_names() == [f"ciliate-proxy-{self.proxy_port}"]

    @property
    def admin_socket(self) -> Path:
        assert self.proxy.supervisor is not None and self.proxy.supervisor.admin_socket is not None
        return self.proxy.supervisor.admin_socket

    async def listener_names(self) -> list[str]:
        async with admin_client(self.admin_socket) as client:
            resp = await client.get("/listeners", params={"format": "json"})
        return sorted(ls["name"] for ls in resp.json()["listener_statuses"])

    def accepts(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", self.proxy_port)) == 0


@contextlib.asynccontextmanager
async def running(make: Callable[[Path], Node], prefix: str) -> AsyncIterator[Node]:
    """A started Node in a fresh directory, stopped and removed afterwards."""
    # Short: unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    n = make(root)
    n.prepare()
    try:
        await n.start()
        yield n
    finally:
        await n.agent.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    async with running(Node, "cil-h-") as n:
        yield n


def envoy_tcp_listeners(pid: int) -> set[str]:
    """host:port of every TCP socket `pid` listens on, as `ss` reports them."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3] for line in out.splitlines() if f"pid={pid}," in line}


def connect_as_nobody(path: Path) -> str:
    out = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c", CONNECT_AS_NOBODY, str(path)],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


async def test_envoy_admin_is_a_root_only_unix_socket_and_not_on_tcp(node: Node) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("switching to the nobody user needs root and setpriv")
    sock = node.admin_socket
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    # Only the proxy listener: no admin port on loopback.
    assert envoy_tcp_listeners(node.proxy.supervisor.pid) == {f"127.0.0.1:{node.proxy_port}"}
    # Refused as installed (the state directory is 0700) ...
    assert connect_as_nobody(sock) == str(errno.EACCES)
    # ... and by the socket's own mode, even with the directories opened up.
    for d in (node.root, node.state_dir, sock.parent):
        d.chmod(0o711)
    assert connect_as_nobody(sock) == str(errno.EACCES)
    assert await node.listener_names()  # root still gets in


async def test_state_dir_and_every_file_in_it_are_root_only(node: Node) -> None:
    # (the fixture already started the agent: endpoint table, allocations,
    # Envoy's bootstrap, log and admin socket, the xDS and API sockets)
    assert stat.S_IMODE(node.state_dir.stat().st_mode) == 0o700
    seen = set()
    for path in [node.state_dir, *node.state_dir.rglob("*")]:
        mode = path.lstat().st_mode
        rel = str(path.relative_to(node.state_dir))
        seen.add(rel)
        want = 0o700 if stat.S_ISDIR(mode) else 0o600
        assert stat.S_IMODE(mode) == want, f"{rel}: {oct(stat.S_IMODE(mode))}"
    assert {"endpoints.json", "envoy/bootstrap.json", "envoy/envoy.log", "xds.sock", "agent.sock", node.admin_socket.relative_to(node.state_dir).as_posix()} <= seen


async def test_an_older_installs_readable_state_is_tightened_at_start() -> None:
    root = Path(tempfile.mkdtemp(prefix="cil-h-"))
    n = Node(root)
    n.prepare()
    # As an older install left it: the datapath's per-endpoint directory made
    # first (mkdir without a mode), Envoy's log and files world-readable.
    for d, mode in ((n.state_dir, 0o755), (n.state_dir / "endpoints" / "1", 0o755), (n.state_dir / "envoy", 0o755)):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)
    (n.state_dir / "endpoints").chmod(0o755)
    for f in ("endpoints/1/endpoint.json", "envoy/envoy.log", "envoy/bootstrap.json", "proxy_ports.json"):
        path = n.state_dir / f
        if not path.exists():
            path.write_text("{}")
        path.chmod(0o644)
    try:
        await n.start()
        for path in [n.state_dir, *n.state_dir.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"
    finally:
        await n.agent.stop()
        shutil.rmtree(root, ignore_errors=True)


async def wait_for(cond, timeout: float, what: str):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_drained_listeners_degrade_health_and_are_restored(node: Node) -> None:
    health = node.agent.health()
    assert health.ok and health.checks["proxy"] == "ok"
    first_pid = node.proxy.supervisor.pid
    assert node.accepts()
    async with admin_client(node.admin_socket) as client:
        assert (await client.post("/drain_listeners")).status_code == 200
    # Envoy answers before its workers have closed the sockets (the close is
    # posted to each worker thread), so the refusal is waited for; the agent
    # cannot restore the listener sooner than an Envoy restart, seconds away.
    await wait_for(lambda: not node.accepts(), 10, "Envoy to stop accepting")  # L7 traffic finds no proxy
    assert node.proxy.supervisor.pid == first_pid

    # What `ciliate status` and /v1/healthz report (both read Agent.health()).
    degraded = await wait_for(lambda: None if (h := node.agent.health()).ok else h, 10, "health to notice")
    reason = degraded.checks["proxy"]
    assert f"ciliate-proxy-{node.proxy_port} (not listening)" in reason, reason
    status = node.agent.status()
    assert not status.ok and status.proxy["detail"] == reason

    # Restored: a new Envoy with the listener, accepting again, health ok.
    await wait_for(lambda: node.agent.health().ok, 30, "health to recover")
    assert node.proxy.supervisor.pid not in (None, first_pid)
    assert node.proxy.status()["envoy_restarts"] == 1
    assert await node.listener_names() == [f"ciliate-proxy-{node.proxy_port}"]
    assert node.accepts()
