"""Which policies are in force, from which file, and which files are broken.

A file is taken whole or not at all: if any document in it fails validation,
the file's previous valid version stays in force (marked stale) and its
problems are shown on the status, so a typo never opens or closes traffic. A
removed file's policies are withdrawn. When two files define the same policy
(kind, namespace, name), the later path in sorted order wins, as
`ciliate policy validate DIR` and `kubectl apply` of both would; the status
warns about the shadowed copy. A unit is a file (a Path) or an object from
the cluster source (its source name, a str such as
`k8s:CiliumNetworkPolicy/ns/name`). Pure bookkeeping, no I/O.

The book keeps each policy as it was written. A policy that names
Kubernetes Services (`toServices`) is in force as resolved against the
latest Services snapshot (`set_services`, through the ServicePeers port):
its entry is replaced only when the resolution changes, so a Service change
recompiles just the policies it touches. A policy with toFQDNs is resolved
the same way against the names the DNS proxy learned (`set_names`, through
the FQDNPeers port).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from typing import Any

from agent.core.ports import FQDNPeers, LoadedFile, LoadedPolicy, PolicyProblem, ServicePeers

Source = Path | str  # a policy file, or an API object's source name


@dataclass(frozen=True, slots=True)
class BookEntry:
    """One policy in force and the file it came from. A new version of the
    policy is a new entry, so `is` tells whether a regeneration has seen it."""

    policy: LoadedPolicy
    source: Source
    key: str = field(init=False)  # policy.key, computed once: the book reads it for every policy after every change

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.policy.key)


class PolicyBook:
    def __init__(self, service_peers: ServicePeers | None = None, fqdn_peers: FQDNPeers | None = None) -> None:
        """Without `service_peers` (`fqdn_peers`) toServices (toFQDNs) items
        stay as written."""
        self._by_file: dict[Source, tuple[BookEntry, ...]] = {}
        self._problems: dict[Source, tuple[PolicyProblem, ...]] = {}
        self._in_force: dict[str, BookEntry] | None = None  # cache, dropped on every change
        self._service_peers = service_peers
        self._services: Any = None  # None: no source of Services (file mode)
        self._fqdn_peers = fqdn_peers
        self._names: Any = None  # None: nothing learned from DNS
        # key -> (entry as written, the Services and names snapshots it was
        # resolved against, entry in force, why a toServices or toFQDNs item
        # selects nothing).
        # in_force() runs after every change: with 1,000 policies, resolving
        # them all again was 5 of the agent's 17 ms per change, so an entry
        # is resolved again only when it or the snapshot is new.
        self._resolved: dict[str, tuple[BookEntry, tuple[Any, Any], BookEntry, tuple[str, ...]]] = {}
        self._snapshot: tuple[Any, Any] = (None, None)
        self._order: list[Source] | None = None  # sources in shadowing order; None: sort again

    def update_file(self, path: Source, loaded: LoadedFile) -> bool:
        """Take a freshly loaded file; returns True when the policies in force changed."""
        problems = list(loaded.problems)
        keys = [p.key for p in loaded.policies]
        for dup in {k for k in keys if keys.count(k) > 1}:
            problems.append(PolicyProblem(str(path), "metadata.name", f"{dup} is defined twice in this file"))
        self._in_force = None
        if problems:
            self._problems[path] = tuple(problems)
            return False
        self._problems.pop(path, None)
        old = {e.key: e for e in self._by_file.get(path, ())}
        entries = []
        for pol in loaded.policies:
            prev = old.get(pol.key)
            entries.append(prev if prev is not None and prev.policy == pol else BookEntry(pol, path))
        new = tuple(entries)
        changed = [e.key for e in new] != list(old) or any(e is not old.get(e.key) for e in new)
        if (path in self._by_file) != bool(new):
            self._order = None
        if new:
            self._by_file[path] = new
        else:
            self._by_file.pop(path, None)
        return changed

    def remove_file(self, path: Source) -> bool:
        self._in_force = None
        self._problems.pop(path, None)
        if path in self._by_file:
            self._order = None
        return self._by_file.pop(path, None) is not None

    def _sources(self) -> list[Source]:
        if self._order is None:
            self._order = sorted(self._by_file, key=str)
        return self._order

    def set_services(self, services: Any) -> bool:
        """A new Services snapshot; returns True when a policy in force resolves differently."""
        return self._new_snapshot(services, self._names)

    def set_names(self, names: Any) -> bool:
        """A new snapshot of the names the DNS proxy learned; returns True
        when a policy in force resolves differently."""
        return self._new_snapshot(self._services, names)

    def _new_snapshot(self, services: Any, names: Any) -> bool:
        before = dict(self.in_force())
        self._services, self._names = services, names
        self._snapshot = (services, names)
        self._in_force = None
        after = self.in_force()
        return any(after[k] is not before.get(k) for k in after)

    def in_force(self) -> Mapping[str, BookEntry]:
        """key -> entry of every policy in force (a later path shadows an earlier one)."""
        if self._in_force is None:
            written = {e.key: e for path in self._sources() for e in self._by_file[path]}
            self._in_force = {k: self._resolve(e) for k, e in written.items()}
            for gone in set(self._resolved) - set(written):
                del self._resolved[gone]
        return self._in_force

    def written(self) -> list[LoadedPolicy]:
        """Every policy in force as written (toServices not yet resolved)."""
        return [e.policy for e in {e.key: e for path in self._sources() for e in self._by_file[path]}.values()]

    def _resolve(self, entry: BookEntry) -> BookEntry:
        if self._service_peers is None and self._fqdn_peers is None:
            return entry
        key = entry.key
        prev = self._resolved.get(key)
        if prev is not None and prev[0] is entry and prev[1] is self._snapshot:
            return prev[2]  # same policy, same snapshots: resolves as last time
        policy, notes = entry.policy, ()
        if self._service_peers is not None:
            policy, notes = self._service_peers.resolve(policy, self._services)
        if self._fqdn_peers is not None:
            policy, more = self._fqdn_peers.resolve(policy, self._names)
            notes += more
        if policy is entry.policy:
            resolved, notes = entry, ()
        elif prev is not None and prev[0] is entry and prev[2].policy == policy:
            resolved = prev[2]  # a new snapshot, the same result: the compiler is not asked again
        else:
            resolved = BookEntry(policy, entry.source)
        self._resolved[key] = (entry, self._snapshot, resolved, notes)
        return resolved

    def service_notes(self) -> Mapping[str, tuple[str, ...]]:
        """key -> why toServices items of that policy in force select nothing."""
        self.in_force()
        return {k: notes for k, (_, _, _, notes) in self._resolved.items() if notes}

    def shadowed(self) -> dict[str, list[Source]]:
        """key -> files whose definition of that policy is hidden by a later file."""
        seen: dict[str, list[Source]] = {}
        for path in self._sources():
            for e in self._by_file[path]:
                seen.setdefault(e.key, []).append(path)
        return {k: paths[:-1] for k, paths in seen.items() if len(paths) > 1}

    def problems(self) -> Mapping[Source, tuple[PolicyProblem, ...]]:
        return dict(self._problems)

    def files(self) -> set[Source]:
        return set(self._by_file) | set(self._problems)
