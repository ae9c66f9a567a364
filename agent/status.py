"""Derives each policy's status from the book, the endpoints and the last regeneration.

Status is computed, never stored: a policy is `enforced` on the endpoints that
are ready and selected by it, at the revision the datapath holds; `pending`
while its change has not been regenerated yet; `error` when its file failed
validation (the previous version stays enforced and is flagged stale), the
compiler refused it, or an endpoint it selects failed (map full, Envoy NACK).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from agent.endpoint_table import LiveState
from agent.models import EndpointState, PolicyError, PolicyErrorKind, PolicyStatus
from agent.policy_book import BookEntry
from agent.ports import PolicyProblem

_MAX_ENDPOINT_ERRORS = 5  # per policy; the endpoint list has the rest


def policy_statuses(
    in_force: Mapping[str, BookEntry],
    problems: Mapping[Path, tuple[PolicyProblem, ...]],
    compile_errors: Mapping[str, str],
    live: Mapping[int, LiveState],
    applied_revision: int,
    shadowed: Mapping[str, list[Path]] | None = None,
) -> list[PolicyStatus]:
    shadowed = shadowed or {}
    out: dict[str, PolicyStatus] = {}
    stale_files = set(problems)
    for key, entry in in_force.items():
        name = entry.policy.name
        errors: list[PolicyError] = []
        if entry.source in stale_files:
            errors += [PolicyError(kind=PolicyErrorKind.VALIDATION, message=str(p)) for p in problems[entry.source]]
        if key in compile_errors:
            errors.append(PolicyError(kind=PolicyErrorKind.VALIDATION, message=compile_errors[key]))
        enforced = 0
        endpoint_errors = 0
        for eid, lv in sorted(live.items()):
            if name not in lv.policies:
                continue
            if lv.state == EndpointState.READY:
                enforced += 1
            elif lv.state == EndpointState.NOT_READY and lv.failure is not None:
                endpoint_errors += 1
                if endpoint_errors <= _MAX_ENDPOINT_ERRORS:
                    errors.append(PolicyError(kind=PolicyErrorKind(lv.failure.kind), message=f"endpoint {eid}: {lv.failure.message}"))
        if endpoint_errors > _MAX_ENDPOINT_ERRORS:
            errors.append(PolicyError(kind=PolicyErrorKind.DATAPATH, message=f"... and {endpoint_errors - _MAX_ENDPOINT_ERRORS} more endpoints"))
        pending = entry.revision > applied_revision or key in compile_errors
        state = "error" if errors else ("pending" if pending else "enforced")
        out[key] = PolicyStatus(
            name=name,
            kind=entry.policy.kind,
            source=str(entry.source),
            state=state,
            endpoints=enforced,
            revision=applied_revision,
            errors=errors,
            stale=entry.source in stale_files,
            warnings=[f"also defined in {p}, which this file overrides (later path wins)" for p in shadowed.get(key, [])],
        )
    # Files that failed validation and whose policies are not in force at all.
    in_force_files = {e.source for e in in_force.values()}
    for path, probs in problems.items():
        if path in in_force_files:
            continue  # already shown on the file's policies, which stay enforced (stale)
        by_name: dict[str, list[PolicyProblem]] = {}
        for p in probs:
            by_name.setdefault(p.policy or str(path), []).append(p)
        for name, plist in by_name.items():
            if any(s.name == name and s.source == str(path) for s in out.values()):
                continue
            out[f"{path}#{name}"] = PolicyStatus(
                name=name,
                source=str(path),
                state="error",
                revision=applied_revision,
                errors=[PolicyError(kind=PolicyErrorKind.VALIDATION, message=str(p)) for p in plist],
            )
    return sorted(out.values(), key=lambda s: (s.name, s.kind or ""))
