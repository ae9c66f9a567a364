"""gRPC access log service: receives the sidecar Envoys' HTTP access logs and
exposes them as an async stream of `AccessLogEntry` (for `ciliate monitor`).
Does network I/O (unix socket or loopback TCP).

Envoy sends its node identity only on the first message of a stream, so the
node id is remembered per stream. The queue towards consumers is bounded:
when nobody reads, the oldest entries are dropped (counted in `dropped`)
rather than growing memory without limit or pushing back on Envoy.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import AsyncIterator

from envoy_data_plane.envoy.data.accesslog.v3 import HttpAccessLogEntry
from envoy_data_plane.envoy.service.accesslog.v3 import (
    AccessLogServiceBase,
    StreamAccessLogsMessage,
    StreamAccessLogsResponse,
)
from grpclib.server import Server

from .errors import XdsError
from .loopback import require_loopback
from .rbac import RBAC_FILTER, RECEIVER_SHADOW_PREFIX, SHADOW_DENIED, SHADOW_POLICY_KEY, SHADOW_RESULT_KEY

# The shadow verdicts of both RBAC filters (policy audit mode), by key prefix.
_SHADOW_PREFIXES = ("", RECEIVER_SHADOW_PREFIX)


@dataclass(frozen=True, slots=True)
class AccessLogEntry:
    time: datetime
    node: str
    method: str
    path: str
    authority: str
    status: int
    upstream: str  # upstream host:port, "" when no upstream was used (e.g. denied)
    downstream_remote: str
    downstream_local: str
    response_flags: frozenset[str]
    # Policy audit mode: the RBAC filter's shadow rules would have denied the
    # request (it was let through); the shadow policy id or "" when none matched.
    shadow_denied: bool = False
    shadow_policy: str = ""

    @property
    def denied(self) -> bool:
        return "unauthorized_details" in self.response_flags or (self.status == 403 and not self.upstream)

    @property
    def audited(self) -> bool:
        """Would have been denied by policy, and was let through by audit mode."""
        return self.shadow_denied and not self.denied


def _shadow(c) -> tuple[bool, str]:
    """(denied, policy id) from the RBAC filters' dynamic metadata."""
    meta = c.metadata.filter_metadata.get(RBAC_FILTER) if c is not None and c.metadata is not None else None
    if meta is None:
        return False, ""
    fields = meta.fields
    for prefix in _SHADOW_PREFIXES:
        result = fields.get(prefix + SHADOW_RESULT_KEY)
        if result is not None and result.string_value == SHADOW_DENIED:
            policy = fields.get(prefix + SHADOW_POLICY_KEY)
            return True, policy.string_value if policy is not None else ""
    return False, ""


def _addr(a) -> str:
    if a is None or a.socket_address is None:
        return ""
    sa = a.socket_address
    return f"{sa.address}:{sa.port_value}"


def entry_from_proto(node: str, e: HttpAccessLogEntry) -> AccessLogEntry:
    c, req, resp = e.common_properties, e.request, e.response
    flags: frozenset[str] = frozenset()
    when = datetime.now(timezone.utc)
    if c is not None:
        if c.response_flags is not None:
            flags = frozenset(k for k, v in vars(c.response_flags).items() if v is True)
        if c.start_time is not None:
            when = c.start_time if isinstance(c.start_time, datetime) else when
    status = resp.response_code if resp is not None and resp.response_code is not None else 0
    shadow_denied, shadow_policy = _shadow(c)
    return AccessLogEntry(
        time=when,
        node=node,
        method=str(req.request_method.name) if req is not None and req.request_method else "",
        path=req.path if req is not None else "",
        authority=req.authority if req is not None else "",
        status=int(status),
        upstream=_addr(c.upstream_remote_address) if c is not None else "",
        downstream_remote=_addr(c.downstream_remote_address) if c is not None else "",
        downstream_local=_addr(c.downstream_local_address) if c is not None else "",
        response_flags=flags,
        shadow_denied=shadow_denied,
        shadow_policy=shadow_policy,
    )


class _Service(AccessLogServiceBase):
    def __init__(self, owner: "AccessLogServer") -> None:
        self._owner = owner

    async def stream_access_logs(self, messages: AsyncIterator[StreamAccessLogsMessage]) -> StreamAccessLogsResponse:
        node = ""
        async for msg in messages:
            if msg.identifier is not None and msg.identifier.node is not None:
                node = msg.identifier.node.id
            if msg.http_logs is not None:
                for e in msg.http_logs.log_entry:
                    self._owner._put(entry_from_proto(node, e))
        return StreamAccessLogsResponse()


class AccessLogServer:
    """`async for entry in server` yields every HTTP access log entry received."""

    def __init__(
        self, socket_path: str | None = None, tcp: tuple[str, int] | None = None, max_queue: int = 10000
    ) -> None:
        if socket_path is None and tcp is None:
            raise XdsError("AccessLogServer needs socket_path or tcp")
        if tcp is not None:
            require_loopback(tcp[0], "access log listener", XdsError)
        self.socket_path = socket_path
        self.tcp = tcp
        self.tcp_port: int | None = None
        self.dropped = 0
        self._queue: asyncio.Queue[AccessLogEntry] = asyncio.Queue(max_queue)
        self._server: Server | None = None

    def _put(self, entry: AccessLogEntry) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(entry)

    async def start(self) -> None:
        self._server = Server([_Service(self)])
        if self.socket_path is not None:
            if os.path.exists(self.socket_path):
                os.unlink(self.socket_path)
            await self._server.start(path=self.socket_path)
        else:
            assert self.tcp is not None
            await self._server.start(self.tcp[0], self.tcp[1])
            self.tcp_port = self._server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.socket_path and os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    async def get(self) -> AccessLogEntry:
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[AccessLogEntry]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[AccessLogEntry]:
        while True:
            yield await self._queue.get()
