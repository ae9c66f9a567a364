"""The ClusterSource port (agent/core/ports.py) bound to the Kubernetes API.

Eight reflectors (reflector.py) run in threads: CiliumNetworkPolicy,
CiliumClusterwideNetworkPolicy, NetworkPolicy, Namespace, this node's own
Node, the Pods scheduled on this node, Service and EndpointSlice. Their
events hop onto the agent's event loop, where this source keeps the objects
and tells the core what changed: policy objects (parsed by policy/'s loader
in a worker thread), the endpoints whose Pod or Namespace labels changed,
this node's labels (its Node's, node_labels.py), and a new Services
snapshot (services.py) when what `toServices` reads changed. start() returns once every kind has
been listed, so the agent's first regeneration sees the cluster's policies.
While the API server is unreachable the reflectors retry and nothing is
withdrawn: the last known policies stay enforced and health() says so.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from agent.adapters.kubernetes.kinds import (
    KIND_ENDPOINTSLICE,
    KIND_NAMESPACE,
    KIND_NODE,
    KIND_POD,
    KIND_SERVICE,
    POLICY_KINDS,
    SERVICE_KINDS,
    STATUS_KINDS,
    Kind,
    kinds,
    patch_status,
)
from agent.adapters.kubernetes.node_labels import node_labels
from agent.adapters.kubernetes.node_status import StatusWriter, Target
from agent.adapters.kubernetes.objects import load_object, pod_name, source_name, spec_of
from agent.adapters.kubernetes.pod_addresses import pod_ips
from agent.adapters.kubernetes.pod_labels import dropped_labels, endpoint_labels
from agent.adapters.kubernetes.pod_ports import pod_named_ports
from agent.adapters.kubernetes.reflector import Event, Reflector, Timing
from agent.adapters.kubernetes.services import catalog
from agent.core.models import PolicyStatus
from agent.core.ports import ClusterEvents, LoadedFile, PolicyObjects
from agent.core.shutdown import stop_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KubernetesOptions:
    node_name: str = field(default_factory=socket.gethostname)
    timing: Timing = field(default_factory=Timing)
    sync_timeout: float = 180.0  # Cilium's --k8s-sync-timeout
    write_status: bool = True
    status_interval: float = 1.0  # at most one status write per object per this many seconds
    status_qps: float = 10.0
    status_settle: float = 0.2
    server: str = ""  # for status: which API server
    stop_timeout: float = 5.0  # stop(): how long to wait for the status writer, then for the reflector threads


class KubernetesSyncTimeout(Exception):
    pass


class KubernetesSource:
    def __init__(
        self,
        api_client: Callable[[], client.ApiClient],
        options: KubernetesOptions,
        make_kinds: Callable[[client.ApiClient, str], Mapping[str, Kind]] = kinds,
    ) -> None:
        self._make_api = api_client
        self.options = options
        self._make_kinds = make_kinds
        self.api: client.ApiClient | None = None
        self.reflectors: dict[str, Reflector] = {}
        self.objects: dict[str, dict[str, dict[str, Any]]] = {
            k: {} for k in (*POLICY_KINDS, KIND_NAMESPACE, KIND_NODE, KIND_POD, *SERVICE_KINDS)
        }
        # This node's labels from its Node object; None until a Node is seen.
        # A deleted Node leaves them in force, as a deleted Pod leaves its
        # endpoint's labels: the node is still here (its kubelet registers
        # it again).
        self._node_labels: dict[str, str] | None = None
        self._services: Any = None  # the last ServiceCatalog handed to the core
        self._events: ClusterEvents | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._synced: dict[str, asyncio.Event] = {}
        self._pods_seen = asyncio.Condition()
        self._writer: StatusWriter | None = None
        self._labels_dropped = 0  # pod labels refused, once per Pod change (pod_labels.py)
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = False

    # --- lifecycle -------------------------------------------------------------------
    async def start(self, events: ClusterEvents) -> None:
        self._events = events
        self._loop = asyncio.get_running_loop()
        self.api = await asyncio.to_thread(self._make_api)
        for name, kind in self._make_kinds(self.api, self.options.node_name).items():
            self._synced[name] = asyncio.Event()
            self.reflectors[name] = Reflector(
                kind, self.options.timing, deliver=self._from_thread(name), on_health=self._health_changed
            )
        for r in self.reflectors.values():
            r.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self._synced.values())), self.options.sync_timeout)
        except TimeoutError:
            missing = [n for n, e in self._synced.items() if not e.is_set()]
            why = "; ".join(f"{n}: {self.reflectors[n].health.error}" for n in missing if self.reflectors[n].health.error)
            await self.stop()
            raise KubernetesSyncTimeout(
                f"Kubernetes API ({self.options.server or 'configured server'}): {', '.join(missing)} not listed within "
                f"{self.options.sync_timeout:.0f}s{': ' + why if why else ''}"
            ) from None
        if self.options.write_status:
            o = self.options
            self._writer = StatusWriter(o.node_name, self._patch, interval=o.status_interval, qps=o.status_qps, settle=o.status_settle)
            self._tasks.append(asyncio.create_task(
                self._writer.run(self._statuses, self._targets, self._reachable), name="ciliate-k8s-status"))
            self._writer.wake()
        if self._node_labels is None:
            log.warning("Kubernetes: no Node %s; this node's labels are its --node-label ones only", self.options.node_name)
        log.info("Kubernetes: %d policies, %d namespaces, %d pods on node %s, %d services",
                 sum(len(self.objects[k]) for k in POLICY_KINDS), len(self.objects[KIND_NAMESPACE]),
                 len(self.objects[KIND_POD]), self.options.node_name, len(self.objects[KIND_SERVICE]))

    async def stop(self) -> None:
        """Returns within about twice `stop_timeout` whatever the API server
        and the client's threads do; a reflector thread still blocked then is
        a daemon that ends at its own request timeout."""
        self._stopped = True
        await stop_tasks(self._tasks, self.options.stop_timeout, "Kubernetes source tasks")
        self._tasks.clear()
        for r in self.reflectors.values():
            r.stop()
        # Polled, not joined in a worker thread: one deadline for all of them,
        # no need of a free executor thread, and the loop stays free meanwhile
        # for a reflector blocked handing us an event.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.stop_timeout
        while (running := [r.kind.name for r in self.reflectors.values() if r.running]) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if running:
            # A request still waiting for its response headers cannot be cut
            # from outside the client; its read timeout ends it.
            log.warning("Kubernetes reflectors %s did not stop within %.1fs; left to end at their request timeout",
                        ", ".join(running), self.options.stop_timeout)
        if self.api is not None:
            await asyncio.to_thread(self.api.close)
            self.api = None

    # --- events from the reflector threads ---------------------------------------------
    def _from_thread(self, name: str) -> Callable[[list[Event], bool], None]:
        def deliver(events: list[Event], relisted: bool) -> None:
            loop = self._loop
            if loop is None or self._stopped or loop.is_closed():
                return
            fut = asyncio.run_coroutine_threadsafe(self._apply(name, events, relisted), loop)
            while not self._stopped:  # the reflector waits: events stay in order, and apply before the next
                try:
                    fut.result(timeout=1.0)
                    return
                except TimeoutError:
                    continue
                except Exception:  # noqa: BLE001
                    log.exception("Kubernetes %s events not applied", name)
                    return

        return deliver

    def _health_changed(self) -> None:
        loop = self._loop
        if self._writer is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._writer.wake)

    async def _apply(self, name: str, events: list[Event], relisted: bool) -> None:
        if name in POLICY_KINDS:
            await self._apply_policies(name, events)
        elif name == KIND_NAMESPACE:
            await self._apply_namespaces(events)
        elif name == KIND_POD:
            await self._apply_pods(events)
        elif name == KIND_NODE:
            await self._apply_node(events)
        elif name in SERVICE_KINDS:
            await self._apply_services(name, events)
        if relisted:
            self._synced[name].set()

    async def _apply_policies(self, kind: str, events: list[Event]) -> None:
        store = self.objects[kind]
        removed: set[str] = set()
        parse: dict[str, dict[str, Any]] = {}
        look_again = False  # the status writer: something its entries depend on changed
        for type_, obj in events:
            key = self.reflectors[kind].kind.key(obj)
            src = source_name(kind, obj)
            prev = store.get(key)
            if type_ == "DELETED":
                store.pop(key, None)
                removed.add(src)
                parse.pop(src, None)
                if self._writer is not None:
                    self._writer.forget(src)
                continue
            store[key] = obj
            removed.discard(src)
            if prev is None or spec_of(prev) != spec_of(obj):
                parse[src] = obj
                look_again = True
            else:
                # undone() first: it also forgets what was written, so the
                # next pass compares with the object even when its
                # annotations changed in the same event.
                undone = self._writer is not None and self._writer.undone(src, obj)
                look_again |= undone or _entry_inputs(prev) != _entry_inputs(obj)
        changed: dict[str, LoadedFile] = {}
        if parse:
            # Parsing a thousand objects after a relist takes a while: off the loop.
            changed = await asyncio.to_thread(lambda: {s: load_object(kind, o) for s, o in parse.items()})
        if (changed or removed) and self._events is not None:
            await self._events.policy_objects_changed(PolicyObjects(changed, frozenset(removed)))
        if self._writer is not None and look_again:
            # Not on our own writes coming back: with a thousand objects each
            # one started another pass over all of them.
            self._writer.wake()

    async def _apply_namespaces(self, events: list[Event]) -> None:
        store = self.objects[KIND_NAMESPACE]
        touched: set[str] = set()
        for type_, obj in events:
            name = (obj.get("metadata") or {}).get("name")
            old = store.get(name)
            if type_ == "DELETED":
                store.pop(name, None)
            else:
                store[name] = obj
            if _labels(old) != _labels(obj if type_ != "DELETED" else None):
                touched.add(name)
        if touched and self._events is not None:
            names = [n for n, p in self.objects[KIND_POD].items() if (p.get("metadata") or {}).get("namespace") in touched]
            if names:
                await self._events.endpoint_labels_changed(names)

    async def _apply_pods(self, events: list[Event]) -> None:
        store = self.objects[KIND_POD]
        touched: set[str] = set()
        for type_, obj in events:
            name = pod_name(obj)
            old = store.get(name)
            if type_ == "DELETED":
                store.pop(name, None)  # the endpoint keeps its labels until CNI DEL removes it
                continue
            store[name] = obj
            if old is None or _labels(old) != _labels(obj):
                self._report_dropped(name, obj)
            if old is None or _labels(old) != _labels(obj) or _sa(old) != _sa(obj) or _ports(old) != _ports(obj):
                touched.add(name)
        if touched:
            async with self._pods_seen:
                self._pods_seen.notify_all()
            if self._events is not None:
                await self._events.endpoint_labels_changed(touched)

    async def _apply_node(self, events: list[Event]) -> None:
        store = self.objects[KIND_NODE]
        labels = self._node_labels
        for type_, obj in events:
            name = str((obj.get("metadata") or {}).get("name"))
            if type_ == "DELETED":
                store.pop(name, None)
                log.warning("Kubernetes: Node %s deleted; its last labels stay in force", name)
                continue
            old, store[name] = store.get(name), obj
            if old is not None and _labels(old) == _labels(obj):
                continue  # a status update (the kubelet's heartbeats)
            labels, dropped = node_labels(obj)
            for key, why in sorted(dropped.items()):
                log.warning("node %s: label %r not taken from the Node: %s", name, key, why)
        if labels != self._node_labels:
            log.info("Kubernetes: node %s labels %s", self.options.node_name,
                     ", ".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "none")
            self._node_labels = labels
            if self._events is not None:
                await self._events.node_labels_changed()

    async def _apply_services(self, kind: str, events: list[Event]) -> None:
        store = self.objects[kind]
        for type_, obj in events:
            key = self.reflectors[kind].kind.key(obj)
            if type_ == "DELETED":
                store.pop(key, None)
            else:
                store[key] = obj
        # The whole snapshot again: cheap next to a compile, and the core
        # recompiles only the policies whose resolution it changes.
        new = catalog(self.objects[KIND_SERVICE].values(), self.objects[KIND_ENDPOINTSLICE].values())
        if new != self._services and self._events is not None:
            self._services = new
            await self._events.services_changed(new)

    def _report_dropped(self, name: str, pod: Mapping[str, Any]) -> None:
        # Here, where a Pod version arrives, not in endpoint_labels(): the core
        # asks that again for every pod of a Namespace whose labels changed.
        dropped = dropped_labels(pod)
        for key, why in sorted(dropped.items()):
            log.warning("pod %s: label %r not taken from the Pod: %s", name, key, why)
        self._labels_dropped += len(dropped)

    # --- what the core asks ----------------------------------------------------------
    def endpoint_labels(self, name: str) -> Mapping[str, str] | None:
        pod = self.objects[KIND_POD].get(name)
        if pod is None:
            return None
        ns = (pod.get("metadata") or {}).get("namespace")
        return endpoint_labels(pod, self.objects[KIND_NAMESPACE].get(ns))

    def node_labels(self) -> Mapping[str, str] | None:
        return dict(self._node_labels) if self._node_labels is not None else None

    def endpoint_named_ports(self, name: str) -> list[dict[str, Any]] | None:
        pod = self.objects[KIND_POD].get(name)
        if pod is None:
            return None
        ports, problems = pod_named_ports(pod)
        for why in problems:
            log.warning("pod %s: container port left out of named ports: %s", name, why)
        return ports

    async def wait_endpoint_labels(self, name: str, timeout: float) -> Mapping[str, str] | None:
        if name in self.objects[KIND_POD] or timeout <= 0:
            return self.endpoint_labels(name)
        async with self._pods_seen:
            try:
                await asyncio.wait_for(self._pods_seen.wait_for(lambda: name in self.objects[KIND_POD]), timeout)
            except TimeoutError:
                log.warning("pod %s not seen on node %s within %.1fs; using the labels CNI passed", name, self.options.node_name, timeout)
        return self.endpoint_labels(name)

    def regenerated(self) -> None:
        if self._writer is not None:
            self._writer.wake()

    def _reachable(self) -> bool:
        return all(r.health.reachable for r in self.reflectors.values())

    def health(self) -> Mapping[str, Any]:
        down = [r for r in self.reflectors.values() if not r.health.reachable]
        out: dict[str, Any] = {
            "ok": not down and all(r.health.synced for r in self.reflectors.values()),
            "server": self.options.server,
            "node": self.options.node_name,
            "policies": sum(len(self.objects[k]) for k in POLICY_KINDS),
            "pods": len(self.objects[KIND_POD]),
            "services": len(self.objects[KIND_SERVICE]),
            # Pods with an IPv6 address (dual-stack or IPv6-only).
            "pods_ipv6": sum(pod_ips(p).ipv6 is not None for p in self.objects[KIND_POD].values()),
            "status_writes": self._writer.writes if self._writer is not None else 0,
            "pod_labels_dropped": self._labels_dropped,
            "node_seen": self._node_labels is not None,  # labels from this node's Node object
        }
        if down:
            since = min(r.health.since for r in down) or time.time()
            errors = sorted({r.health.error for r in down if r.health.error})
            out["since"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
            out["detail"] = (
                f"API server unreachable for {time.time() - since:.0f}s ({errors[0] if errors else 'no answer'}); "
                "enforcing the last known policies and labels"
            )
        else:
            out["detail"] = "connected"
        return out

    # --- status write-back -------------------------------------------------------------
    def _statuses(self) -> Mapping[str, PolicyStatus]:
        assert self._events is not None
        return {s.source: s for s in self._events.policies().policies}

    def _targets(self) -> Iterable[Target]:
        for kind in STATUS_KINDS:
            for obj in list(self.objects[kind].values()):
                yield kind, source_name(kind, obj), obj

    def _patch(self, kind: str, namespace: str | None, name: str, body: dict[str, Any]) -> None:
        assert self.api is not None
        patch_status(self.api, kind, namespace, name, body, self.options.timing.request_timeout)


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


def _entry_inputs(obj: Mapping[str, Any]) -> tuple[Any, Any]:
    """What of an object, besides its policy, this node's status entry repeats."""
    meta = obj.get("metadata") or {}
    return meta.get("annotations"), meta.get("generation")


def _sa(obj: Mapping[str, Any] | None) -> str | None:
    return ((obj or {}).get("spec") or {}).get("serviceAccountName")


def _ports(obj: Mapping[str, Any] | None) -> list[Any]:
    return [c.get("ports") for c in ((obj or {}).get("spec") or {}).get("containers") or () if isinstance(c, Mapping)]
