"""How a problem in policy input is worded and located.

Validators in `policy/api/` raise through `fail`/`fail_all` (or the field
markers `reject`/`unsupported`); pydantic collects every problem of a
document; `policy_errors` turns them into `PolicyError`s whose field path is
written the way users read it (`spec.ingress[0].toPorts[0].ports[0].port`)
and whose reason says what was expected and what was found. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import AfterValidator, ValidationError
from pydantic_core import PydanticCustomError

from policy.errors import PolicyError

# A field path longer than this per part is cut (label keys can be 300 characters).
_PART_IN_PATH = 80
_OURS = "policy"  # the error type of every reason we word ourselves

Loc = tuple[str | int, ...]
# In an `at` location: the parent of the field being validated, so a field
# validator can name a sibling (`rules` blaming `ports[0]`).
UP: Loc = ("..",)

# pydantic's type errors, worded as "must be <this>, got <what was there>".
_EXPECTED = {
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "bool_type": "a boolean",
    "int_type": "a number",
}


def fail(reason: str, at: Loc = ()) -> NoReturn:
    """Reject the value being validated; `at` locates the problem inside it."""
    raise PydanticCustomError(_OURS, "{reason}", {"reason": reason, "problems": ((at, reason),)})


def fail_all(problems: Sequence[tuple[Loc, str]]) -> None:
    """Reject the value with every problem found in it (nothing when empty)."""
    if problems:
        raise PydanticCustomError(_OURS, "{reason}", {"reason": problems[0][1], "problems": tuple(problems)})


def reject(reason: str, null_ok: bool = False) -> AfterValidator:
    """A field that is an error whenever it is present (as null too, unless null_ok)."""

    def check(v: Any) -> None:
        if v is not None or not null_ok:
            fail(reason)

    return AfterValidator(check)


def unsupported(what: str) -> AfterValidator:
    """A Cilium field we know and deliberately do not implement."""
    return reject(f"not supported: {what}")


def type_name(v: object) -> str:
    if v is None:
        return "null"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(v), type(v).__name__)


def field_path(loc: Sequence[str | int]) -> str:
    """pydantic's loc -> `a.b[0].c`; long parts (label keys) are cut."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for "the key itself", which the previous part already names
            continue
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if len(part) > _PART_IN_PATH:
            part = part[:_PART_IN_PATH] + "..."
        out = f"{out}.{part}" if out else part
    return out


def _resolve(loc: Loc, at: Loc) -> Loc:
    while at[:1] == UP:
        loc, at = loc[:-1], at[1:]
    return loc + at


def _reasons(err: Any) -> list[tuple[Loc, str]]:
    kind, loc, value = err["type"], tuple(err["loc"]), err.get("input")
    if kind == _OURS:
        return [(_resolve(loc, tuple(at)), reason) for at, reason in err["ctx"]["problems"]]
    if kind == "missing":
        return [(loc, "required")]
    if kind == "extra_forbidden":
        return [(loc, "unknown field")]
    if kind == "invalid_key":  # located at the key itself; name the mapping that holds it
        return [(loc[:-1], f"keys must be strings, got {value!r}")]
    if kind in _EXPECTED:
        return [(loc, f"must be {_EXPECTED[kind]}, got {type_name(value)}")]
    return [(loc, err["msg"])]


def policy_errors(exc: ValidationError, source: str, doc: int | None) -> list[PolicyError]:
    found: dict[tuple[str, str], PolicyError] = {}  # one line per path and reason, in pydantic's order
    for err in exc.errors(include_url=False):
        for loc, reason in _reasons(err):
            path = field_path(loc)
            found.setdefault((path, reason), PolicyError(source, doc, path, reason))
    return list(found.values())
