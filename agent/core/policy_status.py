"""Derives each policy's status from the book, the endpoints and the last regeneration.

Status is computed, never stored: a policy is `enforced` on the endpoints that
are ready and selected by it, at the revision the datapath holds; `pending`
while its change has not been regenerated yet; `error` when its file failed
validation (the previous version stays enforced and is flagged stale), the
compiler refused it, or an endpoint it selects failed (map full, Envoy NACK).
A full policy map is the fault of the policies that put the most entries in
it: they are in `error`; the other policies selecting that endpoint are
`not-enforced`, with a reason naming the culprits (this needs the compiled
state of the last regeneration; without it every selecting policy is in
`error`, as before). Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.core.endpoint_table import LiveState
from agent.core.models import EndpointState, PolicyErrorKind, PolicyStatus, PolicyStatusError
from agent.core.policy_book import BookEntry
from agent.core.ports import PolicyProblem
from policy.compiled import CompiledState

_MAX_ENDPOINT_ERRORS = 5  # per policy; the endpoint list has the rest


@dataclass(frozen=True, slots=True)
class _MapFull:
    """Who filled one endpoint's policy map: policy name -> entries it put there."""

    by_policy: Mapping[str, int]

    @property
    def culprits(self) -> list[str]:
        most = max(self.by_policy.values(), default=0)
        return sorted(p for p, n in self.by_policy.items() if n == most and most > 0)


def _map_full_blame(live: Mapping[int, LiveState], compiled: CompiledState | None) -> dict[int, _MapFull]:
    """Per map-full endpoint, the entries each policy contributed (from the entries' provenance)."""
    out: dict[int, _MapFull] = {}
    if compiled is None:
        return out
    for eid, lv in live.items():
        ep = compiled.endpoints.get(eid)
        if ep is None or lv.failure is None or lv.failure.kind != PolicyErrorKind.MAP_FULL:
            continue
        counts: Counter[str] = Counter()
        for entry in ep.entries:
            counts.update({r.policy for r in entry.rules})
        blame = _MapFull(dict(counts))
        if blame.culprits:
            out[eid] = blame
    return out


def policy_statuses(
    in_force: Mapping[str, BookEntry],
    problems: Mapping[Path, tuple[PolicyProblem, ...]],
    compile_errors: Mapping[str, str],
    live: Mapping[int, LiveState],
    applied_revision: int,
    shadowed: Mapping[str, list[Path]] | None = None,
    compiled: CompiledState | None = None,
    *,
    applied: Mapping[str, BookEntry],
    service_notes: Mapping[str, tuple[str, ...]] | None = None,
) -> list[PolicyStatus]:
    """`compiled`: the state the last regeneration compiled, to blame a full map
    on its fillers; `applied`: the book entries it was compiled from (a policy
    whose entry in force is another one is pending); `service_notes`: why
    toServices items of a policy select nothing (warnings: the policy is
    enforced, it just allows nothing there)."""
    shadowed = shadowed or {}
    service_notes = service_notes or {}
    out: dict[str, PolicyStatus] = {}
    stale_files = set(problems)
    blame = _map_full_blame(live, compiled)
    # Endpoints by the policies they enforce, walked once: a status is
    # computed after every regeneration (the Kubernetes write-back) and at
    # every scrape, and with 1,000 policies a walk of every endpoint per
    # policy held the event loop for milliseconds each time.
    selecting: dict[str, list[tuple[int, LiveState]]] = {}
    for eid, lv in sorted(live.items()):
        for name in set(lv.policies):
            selecting.setdefault(name, []).append((eid, lv))
    for key, entry in in_force.items():
        name = entry.policy.ref_name
        stale = entry.source in stale_files
        errors: list[PolicyStatusError] = []
        if stale:
            errors += [PolicyStatusError(kind=PolicyErrorKind.VALIDATION, message=str(p)) for p in problems[entry.source]]
        if key in compile_errors:
            errors.append(PolicyStatusError(kind=PolicyErrorKind.VALIDATION, message=compile_errors[key]))
        enforced = 0
        endpoint_errors = 0
        blocked: list[str] = []  # endpoints another policy's entries made fail
        for eid, lv in selecting.get(name, ()):
            if lv.state == EndpointState.READY:
                enforced += 1
            elif lv.state == EndpointState.NOT_READY and lv.failure is not None:
                fill = blame.get(eid)
                if fill is not None and name not in fill.culprits:
                    who = ", ".join(fill.culprits)
                    blocked.append(f"endpoint {eid}: its policy map is full, mostly with entries of {who}")
                    continue
                message = f"endpoint {eid}: {lv.failure.message}"
                if fill is not None:
                    message += f" ({fill.by_policy[name]} of those entries come from this policy)"
                endpoint_errors += 1
                if endpoint_errors <= _MAX_ENDPOINT_ERRORS:
                    errors.append(PolicyStatusError(kind=PolicyErrorKind(lv.failure.kind), message=message))
        if endpoint_errors > _MAX_ENDPOINT_ERRORS:
            errors.append(PolicyStatusError(kind=PolicyErrorKind.DATAPATH, message=f"... and {endpoint_errors - _MAX_ENDPOINT_ERRORS} more endpoints"))
        pending = applied.get(key) is not entry or key in compile_errors
        state = "error" if errors else ("not-enforced" if blocked else ("pending" if pending else "enforced"))
        reason = None
        if blocked:
            reason = blocked[0] + (f" (and {len(blocked) - 1} more endpoints)" if len(blocked) > 1 else "")
        out[key] = PolicyStatus(
            name=name,
            kind=entry.policy.kind,
            source=str(entry.source),
            state=state,
            reason=reason,
            endpoints=enforced,
            revision=applied_revision,
            errors=errors,
            stale=stale,
            warnings=[f"also defined in {p}, which this file overrides (later path wins)" for p in shadowed.get(key, [])]
            + list(service_notes.get(key, ())),
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
                errors=[PolicyStatusError(kind=PolicyErrorKind.VALIDATION, message=str(p)) for p in plist],
            )
    return sorted(out.values(), key=lambda s: (s.name, s.kind or ""))
