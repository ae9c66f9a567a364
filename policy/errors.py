"""The error hierarchy of `policy/`: every way policy input can be wrong.

One place so callers (CLI, agent status) know what they may catch. Each
`PolicyError` names the file, the document index inside a multi-document
file, the field path inside the document and the reason, and prints as
`FILE[:DOC]: FIELD.PATH: reason`. Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable


class CiliateError(Exception):
    """Base of every error `policy/` raises on purpose."""


class PolicyError(CiliateError):
    """One problem in one policy document."""

    def __init__(self, file: str, doc: int | None, field: str, reason: str) -> None:
        super().__init__(file, doc, field, reason)
        self.file = file
        self.doc = doc
        self.field = field
        self.reason = reason

    def location(self) -> str:
        return self.file if self.doc is None else f"{self.file}:{self.doc}"

    def __str__(self) -> str:
        if self.field:
            return f"{self.location()}: {self.field}: {self.reason}"
        return f"{self.location()}: {self.reason}"

    def __repr__(self) -> str:
        return f"PolicyError({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicyError) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "doc": self.doc, "field": self.field, "reason": self.reason}


class PolicyErrors(CiliateError):
    """Several `PolicyError`s found in one document (all of them, not the first)."""

    def __init__(self, errors: Iterable[PolicyError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class TraceInputError(CiliateError):
    """A trace question that cannot be asked (bad SPEC, unknown entity, bad port)."""
