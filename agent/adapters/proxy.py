"""ProxyControl bound to the real xds/ (ADS server, snapshot cache, renderer,
access-log server) and sidecar/ (supervised Envoy).

The agent publishes one snapshot per regeneration that changed the L7 view
and waits for the Envoy node's ACK; NACK text and ACK timeouts come back as
ProxyRejected / ProxyTimeout. With `spawn_envoy=False` an external Envoy
(e.g. the docker-compose sidecar) connects to the same socket instead.

An Envoy left running by an agent that was killed (it runs in its own
session, so it outlives the agent and keeps serving L7 meanwhile) is found
by its bootstrap path in /proc and retired once the new one is ready and has
acknowledged this agent's first configuration (before that it may not have
the listeners yet, and connections would find no proxy socket). Retiring
drains it gracefully through its admin API before SIGTERM, so requests in
flight on it finish; the two share the listener ports (SO_REUSEPORT) during
the overlap.
Does socket and process I/O.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from agent.ports import ProxyRejected, ProxyTimeout
from policy.compiled import CompiledState
from sidecar.supervisor import EnvoySupervisor
from xds.accesslog import AccessLogServer
from xds.cache import SnapshotCache
from xds.errors import AckTimeout, NackError, XdsError
from xds.render import Renderer, RenderParams
from xds.server import XdsServer

DEFAULT_NODE_ID = "ciliate-sidecar"
RETIRE_AFTER = 30.0  # seconds to wait for the new Envoy before retiring the old one anyway
DRAIN_SECONDS = 1.5  # the supervisor starts Envoy with --drain-time-s 1; a margin on top
log = logging.getLogger(__name__)


def envoys_using(bootstrap: Path, proc: Path = Path("/proc")) -> list[int]:
    """Pids of Envoy processes started with this bootstrap file."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"envoy" in Path(argv[0].decode(errors="replace")).name.encode() and str(bootstrap).encode() in argv:
            found.append(int(entry.name))
    return sorted(found)


class XdsProxy:
    def __init__(
        self,
        run_dir: Path,
        *,
        node_id: str = DEFAULT_NODE_ID,
        spawn_envoy: bool = True,
        xds_tcp: tuple[str, int] | None = None,
        accesslog_tcp: tuple[str, int] | None = None,
        render_params: RenderParams | None = None,
    ) -> None:
        self.node_id = node_id
        self.cache = SnapshotCache()
        xds_sock = str(run_dir / "xds.sock")
        log_sock = None if accesslog_tcp else str(run_dir / "accesslog.sock")
        self.server = XdsServer(self.cache, socket_path=xds_sock, tcp=xds_tcp)
        self.accesslog = AccessLogServer(socket_path=log_sock, tcp=accesslog_tcp)
        self.renderer = Renderer(render_params)
        self.supervisor = (
            EnvoySupervisor(node_id, xds_socket=xds_sock, accesslog_socket=log_sock, workdir=run_dir / "envoy")
            if spawn_envoy
            else None
        )
        self._version = 0
        self._retirer: asyncio.Task[None] | None = None
        self._acked = asyncio.Event()  # a configuration published by this agent was ACKed

    async def start(self) -> None:
        await self.server.start()
        await self.accesslog.start()
        leftovers = envoys_using(self.supervisor.workdir / "bootstrap.json") if self.supervisor is not None else []
        if not leftovers:
            # An empty configuration right away, so Envoy finishes its init and
            # reports ready even before (or without) any L7 policy.
            self._set_empty()
        # Else no configuration until the first publish: the Envoy a killed
        # agent left reconnects to this server, and an empty one would remove
        # the listeners it is still serving L7 with (a window where redirected
        # connections find no proxy socket). With none, it keeps its own.
        if self.supervisor is not None:
            # Read before the new Envoy overwrites the file with its own address.
            old_admin = _read_admin_file(self.supervisor.workdir / "admin-address") if leftovers else None
            await self.supervisor.start()
            if leftovers:
                self._retirer = asyncio.create_task(self._retire(leftovers, old_admin), name="ciliate-retire-old-envoy")

    def _set_empty(self) -> None:
        self.cache.set_snapshot(self.node_id, self.renderer.render(CompiledState(0, {}, {}), "0"))

    async def _retire(self, pids: list[int], old_admin: str | None) -> None:
        assert self.supervisor is not None
        try:
            # The new Envoy holds the listeners once it ACKed this agent's
            # first configuration. With no L7 policy no configuration comes:
            # serve the empty one then (nothing is redirected to either Envoy).
            await asyncio.wait_for(self._acked.wait(), RETIRE_AFTER)
        except TimeoutError:
            log.info("no proxy configuration published in %.0fs; giving the new Envoy an empty one", RETIRE_AFTER)
            if self.cache.get_snapshot(self.node_id) is None:
                self._set_empty()
        try:
            await self.supervisor.wait_ready(RETIRE_AFTER)
        except Exception as exc:
            log.warning("new Envoy not ready (%s); retiring the previous one anyway", exc or type(exc).__name__)
        if old_admin is not None:
            await _drain(old_admin)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
                log.info("retired Envoy pid %d left by a previous agent", pid)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        if self._retirer is not None:
            self._retirer.cancel()
            await asyncio.gather(self._retirer, return_exceptions=True)
        if self.supervisor is not None:
            await self.supervisor.stop()
        await self.accesslog.stop()
        await self.server.stop()

    async def publish(self, state: CompiledState, timeout: float) -> str:
        self._version += 1
        version = f"{state.revision}.{self._version}"
        try:
            snapshot = await self.renderer.render_async(state, version)
        except XdsError as exc:  # the state cannot be expressed: same effect as a NACK
            raise ProxyRejected(f"cannot render the proxy configuration: {exc}") from exc
        self.cache.set_snapshot(self.node_id, snapshot)
        try:
            await self.cache.wait_for_ack(self.node_id, version, timeout)
        except NackError as exc:
            raise ProxyRejected(exc.detail) from exc
        except AckTimeout as exc:
            raise ProxyTimeout(str(exc)) from exc
        self._acked.set()
        return version

    def status(self) -> Mapping[str, Any]:
        sup = self.supervisor
        connected = self.server.streams > 0
        return {
            "ok": connected,
            "detail": None if connected else "no Envoy connected to the xDS server",
            "node_id": self.node_id,
            "envoy_pid": sup.pid if sup else None,
            "envoy_restarts": sup.restarts if sup else 0,
            "xds_streams": self.server.streams,
            "acked_version": self.cache.acked_version(self.node_id),
            "last_nack": self.cache.last_error(self.node_id),
        }

    async def access_log(self) -> AsyncIterator[Mapping[str, Any]]:
        async for e in self.accesslog:
            src_ip, _, src_port = e.downstream_remote.rpartition(":")
            dst_ip, _, dst_port = (e.upstream or e.downstream_local).rpartition(":")
            yield {
                "time": e.time.timestamp(),
                "type": "l7",
                "protocol": "HTTP",
                "src_ip": src_ip or None,
                "src_port": int(src_port) if src_port.isdigit() else None,
                "dst_ip": dst_ip or None,
                "dst_port": int(dst_port) if dst_port.isdigit() else None,
                "method": e.method,
                "path": e.path,
                "status": e.status,
                "verdict": "denied" if e.denied else "forwarded",
                "summary": f"{e.method} http://{e.authority}{e.path} -> {e.status}",
            }


def _read_admin_file(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


async def _drain(admin: str) -> None:
    """Gracefully drain an Envoy's listeners (it tells HTTP clients to close,
    then stops accepting) and give it the drain time; best effort."""
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            resp = await client.post(f"http://{admin}/drain_listeners", params={"graceful": ""})
        if resp.status_code != 200:
            log.warning("draining the previous Envoy at %s: HTTP %d %s", admin, resp.status_code, resp.text[:200])
            return
    except httpx.HTTPError as exc:
        log.warning("draining the previous Envoy at %s failed: %s", admin, exc)
        return
    await asyncio.sleep(DRAIN_SECONDS)
