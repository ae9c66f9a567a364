"""The connection to etcd: one aetcd client on one endpoint at a time, every
call bounded by the operation timeout, every aetcd/gRPC error turned into
this package's errors. I/O.

aetcd 1.0.0 gaps worked around here:
- `aetcd.Client` only opens insecure channels and takes one host:port;
  `_Client` overrides `connect()` to open a TLS channel when the endpoints
  are https, and `Etcd` moves to the next endpoint when one fails.
- gRPC's default reconnect backoff grows to 120 s; the channel options cap
  it at 1 s so a restarted etcd is found again within about a second.
- "requested lease not found" comes back as a bare `ClientError`; it is
  recognised by its message and raised as `LeaseNotFound`.
- A compacted watch start surfaces as `RevisionCompactedError` from the
  event iterator (after the watch was created); it is raised as
  `WatchCompacted`.
- When the client is closed under a running watch, the iterator just ends
  (no error); `watch()` returns and the caller re-watches.
- aetcd's refresh_lease() returns from inside `async for` over a stream,
  and grpc.aio completes calls (cancelled ones too) in tasks of its own,
  some after the channel is closed: the channel therefore lives on an
  event loop of its own thread (`_IoLoop`), so none of that lingers on the
  agent's loop once Cluster.stop() returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc
from aetcd import watcher as aetcd_watcher

from kvstore.config import EtcdConfig
from kvstore.errors import KvstoreError, KvstoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

_LEASE_NOT_FOUND = "requested lease not found"

CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    # Notice a silently dead connection under a long-lived watch. etcd
    # refuses pings more often than every 5 s (--grpc-keepalive-min-time).
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    # A relist is one Range over ciliate/state/ (aetcd has no paging); the
    # gRPC default of 4 MiB would cap the cluster size.
    "grpc.max_receive_message_length": 256 * 1024 * 1024,
}


class LeaseNotFound(KvstoreError):
    """etcd does not know the lease a write was made under (expired or
    revoked). Internal: the Cluster gets a new lease and re-publishes."""


class WatchCompacted(KvstoreError):
    """The watch start revision was compacted away: relist."""

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"watch start revision compacted (etcd keeps history from {compacted_revision})")
        self.compacted_revision = compacted_revision


class _Client(aetcd.Client):
    """aetcd.Client that connects to a full gRPC target, with TLS if given."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None, timeout: float) -> None:
        super().__init__(timeout=timeout, options=CHANNEL_OPTIONS)
        self._target = target
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        options = list(self._options.items())
        if self._credentials is None:
            self.channel = rpc.insecure_channel(self._target, options=options)
        else:
            self.channel = rpc.secure_channel(self._target, self._credentials, options=options)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd_watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=None)
        self._connected.set()


class _IoLoop:
    """An event loop on a thread of its own, where the gRPC channel lives.

    grpc.aio finishes every call (also a cancelled one) in tasks of its own,
    some of them a while after the channel closed; on the caller's loop those
    would outlive Cluster.stop(). Here they stay on this loop, which close()
    drains, cancels and stops. Results and exceptions come back through
    futures; watch events through call_soon_threadsafe, in order."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    async def run(self, coro: Awaitable[T]) -> T:
        """Run `coro` on the I/O loop; cancelling the caller cancels it."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def stop(self, last: Awaitable[None]) -> None:
        """Run `last`, let the loop's remaining tasks end (0.5 s), cancel
        the rest, stop the loop and join the thread."""

        async def drain() -> None:
            with contextlib.suppress(Exception):
                await last
            me = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not me]
            if others:
                await asyncio.wait(others, timeout=0.5)
            others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            await self.run(drain())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 2.0)


class Etcd:
    """Calls to etcd with a deadline; tracks reachability for status().

    State (reachable, last_error, the current client) belongs to the
    caller's loop; only the aetcd/gRPC work runs on the I/O loop."""

    def __init__(self, config: EtcdConfig, op_timeout: float) -> None:
        self.config = config
        self.op_timeout = op_timeout
        self.reachable = False
        self.last_error: str | None = None
        self._index = 0
        self._client: _Client | None = None
        self._io: _IoLoop | None = None
        self._on_reachable: list[Callable[[], None]] = []

    @property
    def endpoint(self) -> str:
        return self.config.endpoints[self._index]

    def on_reachable(self, callback: Callable[[], None]) -> None:
        """Call `callback` each time etcd answers again after a failure."""
        self._on_reachable.append(callback)

    def _credentials(self) -> grpc.ChannelCredentials | None:
        c = self.config
        if not c.tls:
            return None
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=c.ca_file.read_bytes() if c.ca_file else None,
                private_key=c.key_file.read_bytes() if c.key_file else None,
                certificate_chain=c.cert_file.read_bytes() if c.cert_file else None,
            )
        except OSError as e:
            raise self._unavailable("reading the TLS files", f"{e.filename}: {e.strerror}") from None

    def _current(self) -> tuple[_IoLoop, _Client]:
        if self._io is None:
            self._io = _IoLoop(name="kvstore-etcd")
        if self._client is None:
            url = urlsplit(self.endpoint)
            self._client = _Client(url.netloc, self._credentials(), self.op_timeout)
        return self._io, self._client

    async def call(self, what: str, fn: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run one aetcd call within the operation timeout. `what` names the
        operation in error messages."""
        io, client = self._current()

        async def bounded() -> T:
            async with asyncio.timeout(self.op_timeout):
                return await fn(client)

        try:
            result = await io.run(bounded())
        except BaseException as e:  # noqa: BLE001 - mapped below, CancelledError re-raised
            raise await self._map(e, what, client) from None
        self._answered()
        return result

    async def watch(self, prefix: bytes, start_revision: int, handle: Callable[[aetcd.Event], None]) -> None:
        """Watch `prefix` from `start_revision`, calling `handle` (on the
        caller's loop) per event, in order. Returns when the stream ends
        without an error (client closed); raises WatchCompacted,
        KvstoreUnavailable."""
        io, client = self._current()
        caller = asyncio.get_running_loop()
        what = "creating the watch"

        async def stream() -> None:
            nonlocal what
            async with asyncio.timeout(self.op_timeout):
                w = await client.watch_prefix(prefix, start_revision=start_revision)
            caller.call_soon_threadsafe(self._answered)
            what = "watching"
            try:
                async for event in w:
                    caller.call_soon_threadsafe(handle, event)
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await w.cancel()

        try:
            await io.run(stream())
        except BaseException as e:  # noqa: BLE001
            raise await self._map(e, what, client) from None

    async def close(self) -> None:
        """Close the channel and stop the I/O loop (no task left behind)."""
        client, self._client = self._client, None
        io, self._io = self._io, None
        if io is not None:
            await io.stop(self._close_client(client))

    async def _close_client(self, client: _Client | None) -> None:
        """On the I/O loop."""
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.op_timeout):
                    await client.close()

    # -- error mapping -------------------------------------------------------

    def _answered(self) -> None:
        was = self.reachable
        self.reachable = True
        if not was:
            for cb in self._on_reachable:
                cb()

    def _unavailable(self, what: str, detail: object) -> KvstoreUnavailable:
        self.reachable = False
        self.last_error = f"etcd {self.endpoint}: {what}: {detail}"
        return KvstoreUnavailable(self.last_error)

    async def _map(self, e: BaseException, what: str, client: _Client) -> BaseException:
        if isinstance(e, asyncio.CancelledError):
            return e
        if isinstance(e, aetcd.RevisionCompactedError):
            self._answered()
            return WatchCompacted(e.compacted_revision)
        if isinstance(e, aetcd.ClientError) and _LEASE_NOT_FOUND in str(e):
            self._answered()
            return LeaseNotFound(f"etcd {self.endpoint}: {what}: {e}")
        if isinstance(e, aetcd.InvalidArgumentError):
            self._answered()
            return KvstoreError(f"etcd {self.endpoint}: {what}: rejected: {e}")
        if isinstance(e, (TimeoutError, aetcd.ConnectionTimeoutError, aetcd.WatchTimeoutError)):
            err = self._unavailable(what, f"no answer within {self.op_timeout:g} s")
        elif isinstance(e, (aetcd.ClientError, grpc.RpcError, grpc.aio.UsageError, OSError)):
            err = self._unavailable(what, str(e) or type(e).__name__)
        else:
            return e
        await self._rotate(client)
        return err

    async def _rotate(self, failed: _Client) -> None:
        """After a failure on `failed`, try the next endpoint next time."""
        if len(self.config.endpoints) < 2 or failed is not self._client:
            return
        self._index = (self._index + 1) % len(self.config.endpoints)
        log.info("kvstore: switching to etcd endpoint %s", self.endpoint)
        self._client = None
        if self._io is not None:
            with contextlib.suppress(Exception):
                await self._io.run(self._close_client(failed))
