"""ProxyControl bound to the real xds/ (ADS server, snapshot cache, renderer,
access-log server) and sidecar/ (supervised Envoy).

The agent publishes one snapshot per regeneration that changed the L7 view
and waits for the Envoy node's ACK; NACK text and ACK timeouts come back as
ProxyRejected / ProxyTimeout. With `spawn_envoy=False` an external Envoy
(e.g. the docker-compose sidecar) connects to the same socket instead.

An Envoy left running by an agent that was killed is found and retired by
sidecar/leftover.py, once the new one is ready and has acknowledged this
agent's first configuration (before that it may not have the listeners yet,
and connections would find no proxy socket); this adapter only decides when.

While Envoy runs, a check every LISTENER_CHECK_SECONDS compares the listeners
of the configuration Envoy ACKed with the listening sockets Envoy really
holds: listeners stopped through the admin API (`/drain_listeners`) or gone
otherwise make `status()` not ok, naming them, and Envoy is restarted, which
gets the whole configuration back over xDS (a stopped listener does not come
back by re-sending the same configuration).
Does socket and process I/O.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from agent.core.ports import ProxyCounters, ProxyRejected, ProxyTimeout
from policy.compiled import CompiledState
from redirect.layout import MARK_MAGIC_PROXY_ORIGIN
from sidecar.bootstrap import read_admin_socket
from sidecar.leftover import envoys_using, retire
from sidecar.listeners import ListenerFault, listener_faults
from sidecar.errors import EnvoyError
from sidecar.supervisor import EnvoySupervisor
from xds.accesslog import AccessLogServer
from xds.cache import SnapshotCache
from xds.limits import ProxyLimits
from xds.errors import AckTimeout, NackError, XdsError
from xds.render import Renderer, RenderParams
from xds.resources import LISTENER
from xds.server import XdsServer

DEFAULT_NODE_ID = "ciliate-sidecar"
RETIRE_AFTER = 30.0  # seconds to wait for the new Envoy before retiring the old one anyway
LISTENER_CHECK_SECONDS = 1.0
# Consecutive failed checks before Envoy is restarted: a listener Envoy has just
# ACKed may still be warming (not yet listed) for a moment.
LISTENER_STRIKES = 2
log = logging.getLogger(__name__)


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
        limits: ProxyLimits | None = None,
    ) -> None:
        self.node_id = node_id
        self.cache = SnapshotCache()
        xds_sock = str(run_dir / "xds.sock")
        log_sock = None if accesslog_tcp else str(run_dir / "accesslog.sock")
        self.server = XdsServer(self.cache, socket_path=xds_sock, tcp=xds_tcp)
        self.accesslog = AccessLogServer(socket_path=log_sock, tcp=accesslog_tcp)
        # Envoy's upstream sockets carry the mark the datapath recognises as
        # proxy-originated; its one home is redirect/layout.py (checked against bpf/).
        params = render_params or RenderParams(upstream_mark=MARK_MAGIC_PROXY_ORIGIN)
        if limits is not None:
            params = replace(params, limits=limits)
        self.renderer = Renderer(params)
        # One ProxyLimits for both halves: the listeners' share and the bootstrap's whole.
        self.supervisor = (
            EnvoySupervisor(node_id, xds_socket=xds_sock, accesslog_socket=log_sock, workdir=run_dir / "envoy", limits=params.limits)
            if spawn_envoy
            else None
        )
        self._version = 0
        self._retirer: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._listener_fault: str | None = None  # why Envoy is not serving its listeners
        self._acked = asyncio.Event()  # a configuration published by this agent was ACKed

    async def start(self) -> None:
        await self.server.start()
        await self.accesslog.start()
        for sock in (self.server.socket_path, self.accesslog.socket_path):
            if sock is not None:
                # Root only, like the directory they are in: ADS can hand Envoy
                # any configuration, and the access log carries request paths.
                os.chmod(sock, 0o600)
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
            # Read before the new Envoy's bootstrap replaces the old one's.
            old_admin = read_admin_socket(self.supervisor.workdir / "bootstrap.json") if leftovers else None
            await self.supervisor.start()
            if leftovers:
                self._retirer = asyncio.create_task(self._retire(leftovers, old_admin), name="ciliate-retire-old-envoy")
            self._checker = asyncio.create_task(self._check_listeners(), name="ciliate-envoy-listeners")

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
        await retire(pids, old_admin, self.supervisor.workdir)

    def _expected_listeners(self) -> frozenset[str] | None:
        """Listener names of the configuration Envoy ACKed last, or None while
        Envoy has not ACKed the current one (nothing to hold it to yet)."""
        snap = self.cache.get_snapshot(self.node_id)
        if snap is None or snap.version != self.cache.acked_version(self.node_id):
            return None
        return snap.names(LISTENER)

    async def _listener_check(self) -> list[ListenerFault] | None:
        sup = self.supervisor
        assert sup is not None
        expected = self._expected_listeners()
        pid = sup.pid
        if expected is None or pid is None or sup.admin_socket is None:
            return None
        try:
            async with sup.admin_client(timeout=2.0) as client:
                return await listener_faults(expected, client, pid)
        except (httpx.HTTPError, OSError, ValueError, KeyError, EnvoyError) as exc:
            # Envoy is restarting or just went away: the supervisor deals with that.
            log.debug("listener check skipped: %s", exc)
            return None

    async def _check_listeners(self) -> None:
        sup = self.supervisor
        assert sup is not None
        strikes = 0
        while True:
            await asyncio.sleep(LISTENER_CHECK_SECONDS)
            faults = await self._listener_check()
            if faults is None:
                continue
            if not faults:
                if self._listener_fault is not None:
                    log.info("Envoy serves all its listeners again")
                self._listener_fault = None
                strikes = 0
                continue
            strikes += 1
            if strikes < LISTENER_STRIKES:
                continue
            strikes = 0
            self._listener_fault = "Envoy is not serving listener(s) " + ", ".join(map(str, faults))
            # Stays set (status degraded) until a check finds them all again.
            try:
                await sup.restart(self._listener_fault + "; restarting it to restore them")
                await sup.wait_ready(RETIRE_AFTER)
            except Exception as exc:  # the supervisor keeps trying on its own
                log.warning("restarting Envoy to restore its listeners: %s", exc or type(exc).__name__)

    async def stop(self) -> None:
        for task in (self._checker, self._retirer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
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
        # The listener fault first: while Envoy restarts to repair it, "not
        # connected" would hide why.
        detail = self._listener_fault or (None if connected else "no Envoy connected to the xDS server")
        return {
            "ok": detail is None,
            "detail": detail,
            "node_id": self.node_id,
            "envoy_pid": sup.pid if sup else None,
            "envoy_restarts": sup.restarts if sup else 0,
            "xds_streams": self.server.streams,
            "acked_version": self.cache.acked_version(self.node_id),
            "last_nack": self.cache.last_error(self.node_id),
        }

    def counters(self) -> ProxyCounters:
        c = self.cache.counters
        return ProxyCounters(
            xds_pushes=dict(c.pushes),
            xds_acks=dict(c.acks),
            xds_nacks=dict(c.nacks),
            envoy_restarts=self.supervisor.restarts if self.supervisor is not None else 0,
        )

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
                # audit: policy would have denied it (403); audit mode let it through
                "verdict": "denied" if e.denied else "audit" if e.audited else "forwarded",
                "summary": f"{e.method} http://{e.authority}{e.path} -> {e.status}",
            }
