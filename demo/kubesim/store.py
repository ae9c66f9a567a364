"""Objects, the one global resourceVersion, the bounded event history and the
open watches: the part of kube-apiserver + etcd that kubesim imitates.

Everything here runs on the server's event loop; stored objects are never
mutated in place (a write stores a new dict), so events can share them.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import errors
from .resources import RESOURCES, ResourceType

Obj = dict[str, Any]
Predicate = Callable[[Mapping[str, Any]], bool]
Key = tuple[str, str, str]  # (group_resource, namespace, name)

FIRST_RESOURCE_VERSION = 100


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    resource: ResourceType
    obj: Obj
    old: Obj | None = None


@dataclass(eq=False)
class Watch:
    """One open watch stream: what it selects and the queue it reads from."""

    resource: ResourceType
    matches: Predicate
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def offer(self, ev: Event) -> None:
        if ev.resource != self.resource:
            return
        now = self.matches(ev.obj)
        before = self.matches(ev.old) if ev.old is not None else False
        if ev.type == "MODIFIED":
            # A write that moves the object into or out of the selection is,
            # for this watcher, an add or a delete (as the watch cache does).
            if now and not before:
                self.queue.put_nowait(("ADDED", ev.obj))
            elif before and not now:
                gone = copy.deepcopy(ev.old)
                gone["metadata"]["resourceVersion"] = str(ev.rv)
                self.queue.put_nowait(("DELETED", gone))
            elif now:
                self.queue.put_nowait(("MODIFIED", ev.obj))
        elif now:
            self.queue.put_nowait((ev.type, ev.obj))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a generation counts: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


class Store:
    def __init__(self, history_limit: int = 1000):
        self._objects: dict[Key, Obj] = {}
        self._rv = FIRST_RESOURCE_VERSION
        self._history: deque[Event] = deque()
        self._history_limit = history_limit
        # Watches from a version older than this get 410 Gone.
        self._oldest = FIRST_RESOURCE_VERSION
        self.watches: set[Watch] = set()

    # -- versions and history -------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def oldest_resource_version(self) -> int:
        return self._oldest

    def compact(self) -> None:
        """Forget all history, as an etcd compaction at the current revision."""
        self._history.clear()
        self._oldest = self._rv

    def history_since(self, rv: int) -> list[Event]:
        if rv < self._oldest:
            raise errors.expired(rv, self._oldest)
        return [ev for ev in self._history if ev.rv > rv]

    def _emit(self, type_: str, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        ev = Event(self._rv, type_, rt, obj, old)
        self._history.append(ev)
        while len(self._history) > self._history_limit:
            self._oldest = self._history.popleft().rv
        for w in list(self.watches):
            w.offer(ev)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    # -- reads ----------------------------------------------------------------

    @staticmethod
    def _key(rt: ResourceType, ns: str, name: str) -> Key:
        return (rt.group_resource, ns if rt.namespaced else "", name)

    def get(self, rt: ResourceType, ns: str, name: str) -> Obj:
        obj = self._objects.get(self._key(rt, ns, name))
        if obj is None:
            raise errors.not_found(rt, name)
        return obj

    def list(self, rt: ResourceType, matches: Predicate) -> list[Obj]:
        items = [o for (gr, _, _), o in self._objects.items() if gr == rt.group_resource and matches(o)]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items

    # -- writes ---------------------------------------------------------------

    def create(self, rt: ResourceType, ns: str, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise errors.invalid(rt, "", "metadata.name", "name or generateName is required")
        if rt.namespaced:
            if ("namespaces", "", ns) not in self._objects:
                raise errors.namespace_not_found(ns)
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        key = self._key(rt, ns, name)
        if key in self._objects:
            raise errors.already_exists(rt, name)
        obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
        for server_owned in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_owned, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if rt.has_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rt.has_status:
            obj.pop("status", None)
            if rt.initial_status is not None:
                obj["status"] = copy.deepcopy(rt.initial_status)
        meta["resourceVersion"] = self._next_rv()
        self._objects[key] = obj
        self._emit("ADDED", rt, obj, None)
        return obj

    def update(self, rt: ResourceType, ns: str, name: str, body: Obj, *, status_only: bool = False,
               check_rv: bool = True) -> Obj:
        """Replace an object (PUT, or the result of a patch).

        With `status_only`, only `status` is taken from `body` (the status
        subresource); otherwise `status` is kept from the stored object when
        the kind has a status subresource.
        """
        old = self.get(rt, ns, name)
        meta_in = body.get("metadata") or {}
        if meta_in.get("name") not in (None, name):
            raise errors.ApiError(400, f"the name of the object ({meta_in.get('name')}) does not match "
                                       f"the name on the URL ({name})")
        want_rv = meta_in.get("resourceVersion")
        if check_rv and want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name)
        if status_only:
            new = copy.deepcopy(old)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(body)
            new["kind"], new["apiVersion"] = rt.kind, rt.api_version
            meta = new.setdefault("metadata", {})
            for owned in ("uid", "creationTimestamp", "namespace", "generation", "deletionTimestamp"):
                if owned in old["metadata"]:
                    meta[owned] = old["metadata"][owned]
                else:
                    meta.pop(owned, None)
            meta["name"] = name
            if rt.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            if rt.has_generation and _spec_part(new) != _spec_part(old):
                meta["generation"] = old["metadata"].get("generation", 0) + 1
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return old  # a no-op write does not advance the version, as on a real server
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[self._key(rt, ns, name)] = new
        self._emit("MODIFIED", rt, new, old)
        return new

    def delete(self, rt: ResourceType, ns: str, name: str, *, precondition_rv: str | None = None,
               precondition_uid: str | None = None) -> Obj:
        old = self.get(rt, ns, name)
        if precondition_rv and precondition_rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name)
        if precondition_uid and precondition_uid != old["metadata"]["uid"]:
            raise errors.conflict(rt, name)
        if rt.plural == "namespaces" and not rt.group:
            # No namespace controller and no Terminating phase: the contents go at once.
            for (gr, obj_ns, obj_name), obj in sorted(self._objects.items()):
                if obj_ns == name and gr != "namespaces":
                    inner = next(r for r in RESOURCES if r.group_resource == gr)
                    self.delete(inner, obj_ns, obj_name)
        del self._objects[self._key(rt, ns, name)]
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit("DELETED", rt, gone, old)
        return gone
