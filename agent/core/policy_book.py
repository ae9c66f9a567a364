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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.core.ports import LoadedFile, LoadedPolicy, PolicyProblem

Source = Path | str  # a policy file, or an API object's source name


@dataclass(frozen=True, slots=True)
class BookEntry:
    """One policy in force and the file it came from. A new version of the
    policy is a new entry, so `is` tells whether a regeneration has seen it."""

    policy: LoadedPolicy
    source: Source


class PolicyBook:
    def __init__(self) -> None:
        self._by_file: dict[Source, tuple[BookEntry, ...]] = {}
        self._problems: dict[Source, tuple[PolicyProblem, ...]] = {}
        self._in_force: dict[str, BookEntry] | None = None  # cache, dropped on every change

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
        old = {e.policy.key: e for e in self._by_file.get(path, ())}
        entries = []
        for pol in loaded.policies:
            prev = old.get(pol.key)
            entries.append(prev if prev is not None and prev.policy == pol else BookEntry(pol, path))
        new = tuple(entries)
        changed = [e.policy.key for e in new] != list(old) or any(e is not old.get(e.policy.key) for e in new)
        if new:
            self._by_file[path] = new
        else:
            self._by_file.pop(path, None)
        return changed

    def remove_file(self, path: Source) -> bool:
        self._in_force = None
        self._problems.pop(path, None)
        return self._by_file.pop(path, None) is not None

    def in_force(self) -> Mapping[str, BookEntry]:
        """key -> entry of every policy in force (a later path shadows an earlier one)."""
        if self._in_force is None:
            self._in_force = {e.policy.key: e for path in sorted(self._by_file, key=str) for e in self._by_file[path]}
        return self._in_force

    def shadowed(self) -> dict[str, list[Source]]:
        """key -> files whose definition of that policy is hidden by a later file."""
        seen: dict[str, list[Source]] = {}
        for path in sorted(self._by_file, key=str):
            for e in self._by_file[path]:
                seen.setdefault(e.policy.key, []).append(path)
        return {k: paths[:-1] for k, paths in seen.items() if len(paths) > 1}

    def problems(self) -> Mapping[Source, tuple[PolicyProblem, ...]]:
        return dict(self._problems)

    def files(self) -> set[Source]:
        return set(self._by_file) | set(self._problems)
