"""kubesim on its own event loop in a background thread, for blocking callers
(the `kubernetes` client, `kubectl` in a subprocess, synchronous tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .server import KubeAPIServer, RequestRecord

T = TypeVar("T")


class ThreadedKubeAPIServer:
    """Use as a context manager; every control runs on the server's loop."""

    def __init__(self, **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kubesim", daemon=True)
        self._thread.start()
        self.server: KubeAPIServer = self.call(lambda: KubeAPIServer(**kwargs))

    def __enter__(self) -> ThreadedKubeAPIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the server's loop and return its result."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def _await(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self._await(self.server.start())

    def stop(self) -> None:
        self._await(self.server.stop())

    def compact(self) -> None:
        self.call(self.server.compact)

    def drop_watches(self) -> int:
        return self.call(self.server.drop_watches)

    def stall(self) -> None:
        self.call(self.server.stall)

    def resume(self) -> None:
        self.call(self.server.resume)

    @property
    def open_watches(self) -> int:
        return self.call(lambda: self.server.open_watches)

    @property
    def resource_version(self) -> int:
        return self.call(lambda: self.server.store.resource_version)

    def request_log(self) -> list[RequestRecord]:
        return self.call(lambda: list(self.server.request_log))

    def clear_request_log(self) -> None:
        self.call(self.server.clear_request_log)

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
