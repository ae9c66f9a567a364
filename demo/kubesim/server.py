"""The HTTP side of kubesim: URL routing, verbs, watch streams and the test
controls (compaction, dropping watches, stop/start on the same port, the
request log). See the package docstring for what it does not implement."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import discovery
from .errors import ApiError
from .patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from .resources import ResourceType, find
from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .store import Store, Watch

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_DROP = object()  # queued to a watch: cut its connection without a clean end


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    status: int | None = None

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("1", "true")


@dataclass(frozen=True)
class _Target:
    resource: ResourceType
    namespace: str  # "" for cluster-scoped kinds or an all-namespaces collection
    name: str | None
    subresource: str | None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _truthy(value: str | None) -> bool:
    return value in ("1", "true", "True")


class KubeAPIServer:
    """An in-process API server on 127.0.0.1; `await start()`, then use `url`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, history_limit: int = 1000,
                 bookmark_interval: float = 1.0, namespaces: tuple[str, ...] = DEFAULT_NAMESPACES):
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.store = Store(history_limit=history_limit)
        self.request_log: list[RequestRecord] = []
        self._runner: web.AppRunner | None = None
        self._streams: set[Watch] = set()
        self._answering = asyncio.Event()
        self._answering.set()
        ns_type = find("", "v1", "namespaces")
        assert ns_type is not None
        for ns in namespaces:
            self.store.create(ns_type, "", {"metadata": {"name": ns}})

    # -- lifecycle --------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (again) on the same port; objects and history survive a stop."""
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._record], client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and cut every open connection (watches included)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.drop_watches()
        await runner.cleanup()

    # -- test controls ----------------------------------------------------------

    def compact(self) -> None:
        """Forget the event history: a watch from any older version gets 410."""
        self.store.compact()

    def drop_watches(self) -> int:
        """Cut every open watch connection mid-stream; return how many."""
        for w in self._streams:
            w.queue.put_nowait(_DROP)
        return len(self._streams)

    def stall(self) -> None:
        """Stop answering without closing anything, as a hung API server or
        a dead path to it: open watches send nothing more (no event, no
        bookmark, no clean end at `timeoutSeconds`) and new requests are read
        but never answered; drop_watches() and stop() still cut connections.
        Lasts until resume(), across stop()/start(); what is written
        meanwhile is sent after resume()."""
        self._answering.clear()

    def resume(self) -> None:
        self._answering.set()

    @property
    def open_watches(self) -> int:
        return len(self._streams)

    def clear_request_log(self) -> None:
        self.request_log.clear()

    # -- HTTP -------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler):
        rec = RequestRecord(request.method, request.path, dict(request.query))
        self.request_log.append(rec)
        await self._answering.wait()
        try:
            resp = await handler(request)
        except ApiError as e:
            resp = _json(e.status(), e.code)
        rec.status = resp.status
        return resp

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return _json(discovery.SERVER_VERSION)
        if parts == ["api"]:
            return _json(discovery.api_versions(f"{self.host}:{self.port}"))
        if parts == ["apis"]:
            return _json(discovery.api_group_list())
        if parts == ["openapi", "v2"]:
            if "protobuf" in request.headers.get("Accept", ""):
                return web.Response(body=discovery.OPENAPI_V2_PROTOBUF,
                                    content_type=discovery.OPENAPI_V2_PROTOBUF_TYPE)
            return _json(discovery.OPENAPI_V2_JSON)
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) == 2:
            doc = discovery.api_group(parts[1])
            return _json(doc) if doc else web.Response(status=404, text="404 page not found")
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return web.Response(status=404, text="404 page not found")
        if not rest:
            doc = discovery.api_resource_list(group, version)
            return _json(doc) if doc else web.Response(status=404, text="404 page not found")
        target = self._target(group, version, rest)
        return await self._serve(request, target)

    @staticmethod
    def _target(group: str, version: str, rest: list[str]) -> _Target:
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] != "status":
            ns, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        rt = find(group, version, rest[0])
        if rt is None or (ns and not rt.namespaced):
            raise ApiError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and rt.has_status):
            raise ApiError(404, "the server could not find the requested resource")
        if name is not None and rt.namespaced and not ns:
            raise ApiError(404, "the server could not find the requested resource")
        return _Target(rt, ns, name, sub)

    async def _serve(self, request: web.Request, t: _Target) -> web.StreamResponse:
        m = request.method
        if _truthy(request.query.get("dryRun")) or request.query.get("dryRun") == "All":
            raise ApiError(400, "kubesim does not implement dryRun")
        if t.name is None:
            if m == "GET":
                if _truthy(request.query.get("watch")):
                    return await self._watch(request, t)
                return self._list(request, t)
            if m == "POST" and (t.namespace or not t.resource.namespaced):
                return _json(self.store.create(t.resource, t.namespace, await self._body(request, t)), 201)
            if m == "DELETE":
                deleted = [self.store.delete(t.resource, o["metadata"].get("namespace", ""), o["metadata"]["name"])
                           for o in self.store.list(t.resource, self._matches(request, t))]
                return _json(self._list_doc(t.resource, deleted))
        elif t.subresource is None:
            if m == "GET":
                return _json(self.store.get(t.resource, t.namespace, t.name))
            if m == "PUT":
                return _json(self.store.update(t.resource, t.namespace, t.name, await self._body(request, t)))
            if m == "PATCH":
                return _json(await self._patch(request, t))
            if m == "DELETE":
                return _json(self._delete(await self._delete_options(request), t))
        else:
            if m == "GET":
                return _json(self.store.get(t.resource, t.namespace, t.name))
            if m == "PUT":
                body = await self._body(request, t)
                return _json(self.store.update(t.resource, t.namespace, t.name, body, status_only=True))
            if m == "PATCH":
                return _json(await self._patch(request, t))
        raise ApiError(405, f"the server does not allow this method on the requested resource ({m})")

    # -- request bodies ---------------------------------------------------------

    @staticmethod
    async def _raw_json(request: web.Request) -> Any:
        text = await request.text()
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ApiError(400, f"the body of the request is not valid JSON: {e}") from e

    async def _body(self, request: web.Request, t: _Target) -> dict[str, Any]:
        body = await self._raw_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be a JSON object")
        rt = t.resource
        if body.get("apiVersion") not in (None, rt.api_version) or body.get("kind") not in (None, rt.kind):
            raise ApiError(400, f"the API version in the data ({body.get('apiVersion')}) or kind "
                                f"({body.get('kind')}) does not match the expected {rt.api_version} {rt.kind}")
        meta = body.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        body_ns = (meta or {}).get("namespace")
        if rt.namespaced and body_ns and body_ns != t.namespace:
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        return body

    async def _patch(self, request: web.Request, t: _Target) -> dict[str, Any]:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        patch = await self._raw_json(request)
        current = self.store.get(t.resource, t.namespace, t.name)
        try:
            if ctype == "application/merge-patch+json":
                result = merge_patch(current, patch)
            elif ctype == "application/strategic-merge-patch+json" and not t.resource.custom:
                result = strategic_merge_patch(current, patch)
            elif ctype == "application/json-patch+json":
                result = json_patch(current, patch)
            else:
                raise ApiError(415, f"the body of the request was in an unknown format ({ctype}); accepted media "
                                    "types include: application/json-patch+json, application/merge-patch+json"
                                    + ("" if t.resource.custom else ", application/strategic-merge-patch+json"))
        except PatchError as e:
            raise ApiError(422, str(e)) from e
        if not isinstance(result, dict):
            raise ApiError(422, "the patch did not yield an object")
        return self.store.update(t.resource, t.namespace, t.name, result, status_only=t.subresource == "status")

    @staticmethod
    async def _delete_options(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        text = await request.text()
        if not text.strip():
            return {}
        try:
            opts = json.loads(text)
        except json.JSONDecodeError as e:
            raise ApiError(400, f"DeleteOptions are not valid JSON: {e}") from e
        return opts if isinstance(opts, dict) else {}

    def _delete(self, opts: dict[str, Any], t: _Target) -> dict[str, Any]:
        pre = opts.get("preconditions") or {}
        assert t.name is not None
        return self.store.delete(t.resource, t.namespace, t.name,
                                 precondition_rv=pre.get("resourceVersion"), precondition_uid=pre.get("uid"))

    # -- list and watch ---------------------------------------------------------

    def _matches(self, request: web.Request, t: _Target):
        rt = t.resource
        allowed = frozenset(("metadata.name", "metadata.namespace", *rt.field_labels))
        try:
            labels = parse_label_selector(request.query.get("labelSelector"))
            fields = parse_field_selector(request.query.get("fieldSelector"), allowed)
        except SelectorError as e:
            raise ApiError(400, str(e)) from e
        ns = t.namespace

        def matches(obj) -> bool:
            meta = obj.get("metadata", {})
            if ns and meta.get("namespace") != ns:
                return False
            return labels(meta.get("labels") or {}) and fields(obj)

        return matches

    @staticmethod
    def _list_doc(rt: ResourceType, items: list[dict[str, Any]], rv: int | None = None) -> dict[str, Any]:
        if not rt.custom:
            # Built-in kinds' list items carry no kind/apiVersion on the wire.
            items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        meta = {"resourceVersion": str(rv)} if rv is not None else {}
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}

    def _list(self, request: web.Request, t: _Target) -> web.Response:
        items = self.store.list(t.resource, self._matches(request, t))
        return _json(self._list_doc(t.resource, items, self.store.resource_version))

    async def _watch(self, request: web.Request, t: _Target) -> web.StreamResponse:
        rt = t.resource
        q = request.query
        watch = Watch(rt, self._matches(request, t))
        try:
            timeout = float(q["timeoutSeconds"]) if "timeoutSeconds" in q else None
        except ValueError as e:
            raise ApiError(400, f"invalid timeoutSeconds: {q['timeoutSeconds']!r}") from e
        bookmarks = _truthy(q.get("allowWatchBookmarks"))
        expired: ApiError | None = None
        rv_param = q.get("resourceVersion", "")
        if rv_param in ("", "0"):
            # No version (or "any"): the current state first, as synthetic ADDED events.
            for obj in self.store.list(rt, watch.matches):
                watch.queue.put_nowait(("ADDED", obj))
        else:
            try:
                since = int(rv_param)
            except ValueError as e:
                raise ApiError(400, f"invalid resourceVersion: {rv_param!r}") from e
            try:
                for ev in self.store.history_since(since):
                    watch.offer(ev)
            except ApiError as e:
                expired = e
        # Registered before the first await, so no write can fall between replay and live events.
        if expired is None:
            self.store.watches.add(watch)
            self._streams.add(watch)
        try:
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            if expired is not None:
                await self._send(resp, "ERROR", expired.status())
                await resp.write_eof()
                return resp
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout is not None else None
            held: list[Any] = []  # events taken from the queue while stalled
            while True:
                if not self._answering.is_set():
                    item = await self._next_while_stalled(watch)
                    if item is _DROP:
                        if request.transport is not None:
                            request.transport.abort()
                        return resp
                    if item is not None:
                        held.append(item)
                    continue
                for ev in held:
                    await self._send(resp, *ev)
                held.clear()
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                try:
                    item = await asyncio.wait_for(watch.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and (deadline is None or loop.time() < deadline):
                        # The queue is empty, so every event up to the current version was sent.
                        await self._send(resp, "BOOKMARK", {
                            "kind": rt.kind, "apiVersion": rt.api_version,
                            "metadata": {"resourceVersion": str(self.store.resource_version)},
                        })
                    continue
                if item is _DROP:
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                await self._send(resp, *item)
            await resp.write_eof()
            return resp
        finally:
            self.store.watches.discard(watch)
            self._streams.discard(watch)

    async def _next_while_stalled(self, watch: Watch) -> Any:
        """The watch's next queued item, or None once the server answers again:
        a stalled stream sends nothing, yet drop_watches() still cuts it."""
        resumed = asyncio.ensure_future(self._answering.wait())
        got = asyncio.ensure_future(watch.queue.get())
        try:
            await asyncio.wait({resumed, got}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            resumed.cancel()
            if not got.done():
                got.cancel()  # Queue.get leaves the item queued when cancelled
        return got.result() if got.done() and not got.cancelled() else None

    @staticmethod
    async def _send(resp: web.StreamResponse, type_: str, obj: dict[str, Any]) -> None:
        await resp.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
