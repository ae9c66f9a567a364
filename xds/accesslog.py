"""gRPC access log service: receives the sidecar Envoys' HTTP access logs and
exposes them as an async stream of `AccessLogEntry` (for `ciliate monitor`).
Does network I/O (unix socket or loopback TCP).

Envoy sends its node identity only on the first message of a stream, so the
node id is remembered per stream. Messages are read from the wire by
accesslog_wire.py (see there why not through envoy-data-plane's classes),
and the stream yields to the event loop after each message, so a burst of
entries never holds up the agent's API. The queue towards consumers is bounded:
when nobody reads, the oldest entries are dropped (counted in `dropped`)
rather than growing memory without limit or pushing back on Envoy.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import AsyncIterator

from envoy_data_plane.envoy.service.accesslog.v3 import StreamAccessLogsResponse
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from . import accesslog_wire as wire
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


class _Raw:
    """The request type grpclib hands our handler: the message's bytes as
    they came (grpclib's codec calls FromString)."""

    @staticmethod
    def FromString(data: bytes) -> bytes:  # noqa: N802 - grpclib's codec API
        return data


def entry_from_wire(node: str, raw: bytes) -> AccessLogEntry:
    f = wire.http_entry(raw, RBAC_FILTER)
    shadow_denied, shadow_policy = False, ""
    meta = f["metadata"]
    for prefix in _SHADOW_PREFIXES:
        if meta.get(prefix + SHADOW_RESULT_KEY) == SHADOW_DENIED:
            shadow_denied, shadow_policy = True, meta.get(prefix + SHADOW_POLICY_KEY, "")
            break
    return AccessLogEntry(
        time=f["time"] or datetime.now(timezone.utc),
        node=node,
        method=f["method"],
        path=f["path"],
        authority=f["authority"],
        status=f["status"],
        upstream=f["upstream"],
        downstream_remote=f["downstream_remote"],
        downstream_local=f["downstream_local"],
        response_flags=f["response_flags"],
        shadow_denied=shadow_denied,
        shadow_policy=shadow_policy,
    )


class _Service:
    def __init__(self, owner: "AccessLogServer") -> None:
        self._owner = owner

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs": Handler(
                self._stream, Cardinality.STREAM_UNARY, _Raw, StreamAccessLogsResponse
            ),
        }

    async def _stream(self, stream: Stream) -> None:
        node = ""
        async for raw in stream:
            try:
                ident, entries = wire.stream_message(raw)
                if ident is not None:
                    node = ident
                for e in entries:
                    self._owner._put(entry_from_wire(node, e))
            except wire.WireError:
                self._owner.malformed += 1
            # A message may carry hundreds of entries: let the API in between.
            await asyncio.sleep(0)
        await stream.send_message(StreamAccessLogsResponse())


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
        self.malformed = 0  # messages that were not well-formed protobuf, dropped whole
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
