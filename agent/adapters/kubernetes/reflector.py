"""List + watch of one kind, kept as a local cache: client-go's reflector,
run in a thread because the `kubernetes` client blocks.

- The first list delivers every object; later events come from a watch that
  starts at the list's resourceVersion and resumes from the last version
  seen (an event's or a BOOKMARK's, which the watch asks for), so a dropped
  stream or a server-side timeout costs no relist.
- `410 Gone` (the version is older than the server's history) means relist:
  the new list is compared with the cache and only the difference is
  delivered (added, changed by resourceVersion, deleted).
- A failed request is retried after a jittered, doubling backoff; the
  reflector reports itself unreachable (with the error and since when) and
  the cache, hence enforcement, stays as it was.
- A connection that delivers nothing for `read_timeout` (no event and no
  bookmark) is taken for dead and reopened.

`deliver` and `on_health` are called from the reflector's thread; the
caller hops onto its event loop (source.py). Network I/O only.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agent.adapters.kubernetes.kinds import Kind

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]  # ("ADDED" | "MODIFIED" | "DELETED", object)


@dataclass(frozen=True, slots=True)
class Timing:
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    watch_timeout: int = 300  # server-side timeoutSeconds; jittered up to 2x as client-go does
    read_timeout: float = 120.0  # silence (no event, no bookmark) after which the stream is dead
    connect_timeout: float = 5.0
    request_timeout: float = 30.0  # one list or status write


class Gone(Exception):
    """410: the resourceVersion is too old; relist."""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(slots=True)
class Health:
    reachable: bool = False
    synced: bool = False
    error: str | None = None
    since: float = 0.0  # when `reachable` last changed
    last_contact: float = 0.0


def _error_of(resp: Any) -> ApiError:
    body = getattr(resp, "data", b"") or b""
    try:
        message = json.loads(body).get("message") or body.decode(errors="replace")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    return ApiError(int(resp.status), message[:300])


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _lines(resp: Any) -> Iterator[bytes]:
    """The stream's lines as they arrive (a line may span chunks)."""
    pending = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending


class Reflector:
    def __init__(
        self,
        kind: Kind,
        timing: Timing,
        deliver: Callable[[list[Event], bool], None],
        on_health: Callable[[], None] = lambda: None,
    ) -> None:
        """`deliver(events, relisted)`: one batch per list (relisted=True, the
        difference from the cache) or per watch event."""
        self.kind = kind
        self.timing = timing
        self._deliver = deliver
        self._on_health = on_health
        self.cache: dict[str, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.health = Health()
        self.lists = 0
        self._stop = threading.Event()
        self._resp: Any = None
        self._thread = threading.Thread(target=self._run, name=f"k8s-{kind.name}", daemon=True)

    # --- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and cut its open stream; `running` turns False once it has."""
        self._stop.set()
        resp = self._resp
        if resp is not None:
            _shutdown(resp)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # --- the loop -------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.timing.backoff_min
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._relist()
                self._watch()
                delay = self.timing.backoff_min
            except Gone:
                log.info("%s: resourceVersion %s expired (410); relisting", self.kind.name, self.resource_version)
                self.resource_version = None
            except Exception as exc:  # noqa: BLE001 - every failure is a retry, none ends the reflector
                if self._stop.is_set():
                    break
                self._set_health(False, describe(exc))
                wait = delay * random.uniform(0.5, 1.5)
                log.warning("%s: %s; retrying in %.1fs", self.kind.name, describe(exc), wait)
                self._stop.wait(wait)
                delay = min(delay * 2, self.timing.backoff_max)

    def _set_health(self, reachable: bool, error: str | None) -> None:
        h = self.health
        now = time.time()
        if reachable:
            h.last_contact = now
        if h.reachable != reachable:
            h.since = now
        changed = (h.reachable, h.error) != (reachable, error)
        h.reachable, h.error = reachable, error
        if changed:
            self._on_health()

    def _fill(self, obj: dict[str, Any]) -> dict[str, Any]:
        # List items of built-in kinds come without kind/apiVersion.
        obj.setdefault("kind", self.kind.name)
        obj.setdefault("apiVersion", self.kind.api_version)
        return obj

    def _relist(self) -> None:
        t = self.timing
        resp = self.kind.list_call(_preload_content=False, _request_timeout=(t.connect_timeout, t.request_timeout))
        if resp.status != 200:
            raise _error_of(resp)
        doc = json.loads(resp.data)
        self.lists += 1
        fresh = {self.kind.key(o): self._fill(o) for o in doc.get("items") or []}
        events: list[Event] = []
        for key, obj in fresh.items():
            old = self.cache.get(key)
            if old is None:
                events.append(("ADDED", obj))
            elif _version(old) != _version(obj):
                events.append(("MODIFIED", obj))
        events += [("DELETED", old) for key, old in self.cache.items() if key not in fresh]
        self.cache = fresh
        self.resource_version = (doc.get("metadata") or {}).get("resourceVersion")
        self._set_health(True, None)
        self._deliver(events, True)
        if not self.health.synced:
            self.health.synced = True
            self._on_health()

    def _watch(self) -> None:
        t = self.timing
        resp = self.kind.list_call(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=int(t.watch_timeout * random.uniform(1.0, 2.0)),
            _preload_content=False,
            _request_timeout=(t.connect_timeout, t.read_timeout),
        )
        self._resp = resp
        try:
            if self._stop.is_set():
                return
            if resp.status == 410:
                raise Gone()
            if resp.status != 200:
                raise _error_of(resp)
            self._set_health(True, None)
            for line in _lines(resp):
                if self._stop.is_set():
                    return
                self._event(json.loads(line))
        finally:
            self._resp = None
            try:
                resp.release_conn()
            except Exception:  # noqa: BLE001 - a cut stream may refuse even this
                pass

    def _event(self, ev: dict[str, Any]) -> None:
        kind, obj = ev.get("type"), ev.get("object") or {}
        self.health.last_contact = time.time()
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.debug("%s: ignoring watch event %r", self.kind.name, kind)
            return
        obj = self._fill(obj)
        key = self.kind.key(obj)
        if kind == "DELETED":
            self.cache.pop(key, None)
        else:
            self.cache[key] = obj
        if rv:
            self.resource_version = rv
        self._deliver([(kind, obj)], False)


def _version(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def _shutdown(resp: Any) -> None:
    """Wake a thread blocked reading `resp`: close() alone does not on Linux."""
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        resp.close()
    except Exception:  # noqa: BLE001
        pass
