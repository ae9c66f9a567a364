"""Which flow events a monitor client asked for: type, verdict, port, labels.

Applied by the agent before an event is queued for a subscriber (see
flows.py), not by the client: a subscriber's queue is bounded and drops its
oldest events when the client is slow, so filtering first means a client
watching only drops of one pod never loses those to a flood of unrelated
forwards, and the socket carries only what is shown.

Label selectors read like `hubble observe`'s: `--from-label app=web` or
`--from-label k8s:app=web` (the source prefix is optional), `key` alone
asks only that the label exists, commas join terms that must all hold, and
repeating the option admits an event matching any of them. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.core.models import FlowEvent

FLOW_TYPES = ("drop", "forward", "redirect", "audit", "l7", "dns", "policy-verdict", "agent")
# What users type -> the verdict an event carries. Kernel events say drop /
# forward / redirect, L7 events forwarded / denied; hubble says DROPPED and
# FORWARDED. Each spelling is accepted, case-insensitively.
_VERDICTS = {
    "drop": "dropped",
    "dropped": "dropped",
    "forward": "forwarded",
    "forwarded": "forwarded",
    "redirect": "redirected",
    "redirected": "redirected",
    "deny": "denied",
    "denied": "denied",
    # Policy audit mode: policy would have dropped (kernel) or denied (L7) it; it passed.
    "audit": "audit",
    "audited": "audit",
}
VERDICTS = ("forwarded", "dropped", "redirected", "denied", "audit")


class FilterError(ValueError):
    """A filter value that means nothing; the message names the parameter."""


def _term_matches(term: tuple[str, str | None], labels: Iterable[str]) -> bool:
    key, value = term
    for label in labels:
        name, eq, val = label.partition("=")
        bare = name.split(":", 1)[1] if ":" in name else name
        if key not in (name, bare):
            continue
        if value is None or (eq and val == value):
            return True
    return False


@dataclass(frozen=True, slots=True)
class LabelSelector:
    terms: tuple[tuple[str, str | None], ...]  # (key, value or None for "exists")

    @classmethod
    def parse(cls, param: str, text: str) -> "LabelSelector":
        terms = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise FilterError(f"{param}: {text!r} has an empty label term (expected key=value[,key=value...])")
            key, eq, value = part.partition("=")
            if not key.strip():
                raise FilterError(f"{param}: {part!r} has no label key")
            terms.append((key.strip(), value.strip() if eq else None))
        return cls(tuple(terms))

    def matches(self, labels: Iterable[str]) -> bool:
        labels = tuple(labels)
        return all(_term_matches(t, labels) for t in self.terms)


def verdict_name(verdict: str | None) -> str | None:
    return _VERDICTS.get((verdict or "").lower())


@dataclass(frozen=True, slots=True)
class FlowFilter:
    types: frozenset[str] = frozenset()
    verdicts: frozenset[str] = frozenset()  # VERDICTS values
    ports: frozenset[int] = frozenset()
    from_labels: tuple[LabelSelector, ...] = ()
    to_labels: tuple[LabelSelector, ...] = ()

    @classmethod
    def parse(
        cls,
        types: Iterable[str] = (),
        verdicts: Iterable[str] = (),
        ports: Iterable[str | int] = (),
        from_labels: Iterable[str] = (),
        to_labels: Iterable[str] = (),
    ) -> "FlowFilter":
        t = frozenset(types)
        bad = sorted(t - set(FLOW_TYPES))
        if bad:
            raise FilterError(f"type: {bad[0]!r} is not an event type (one of {', '.join(FLOW_TYPES)})")
        vs = set()
        for v in verdicts:
            name = verdict_name(v)
            if name is None:
                raise FilterError(f"verdict: {v!r} is not a verdict (one of {', '.join(VERDICTS)})")
            vs.add(name)
        ps = set()
        for p in ports:
            text = str(p)
            if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
                raise FilterError(f"port: {text!r} is not a port number (1-65535)")
            ps.add(int(text))
        return cls(
            t,
            frozenset(vs),
            frozenset(ps),
            tuple(LabelSelector.parse("from_label", s) for s in from_labels),
            tuple(LabelSelector.parse("to_label", s) for s in to_labels),
        )

    def __bool__(self) -> bool:
        return bool(self.types or self.verdicts or self.ports or self.from_labels or self.to_labels)

    def matches(self, e: FlowEvent) -> bool:
        if self.types and e.type not in self.types:
            return False
        if self.verdicts and verdict_name(e.verdict) not in self.verdicts:
            return False
        if self.ports and e.dst_port not in self.ports and e.src_port not in self.ports:
            return False
        if self.from_labels and not any(s.matches(e.src_labels) for s in self.from_labels):
            return False
        if self.to_labels and not any(s.matches(e.dst_labels) for s in self.to_labels):
            return False
        return True
