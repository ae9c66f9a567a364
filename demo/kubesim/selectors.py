"""Label and field selectors in the query-string syntax the API server accepts.

Label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
joined by commas. Field selectors: `path=value`, `path==value`, `path!=value`,
joined by commas, over the field labels the kind supports.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]


class SelectorError(ValueError):
    """A selector the server would answer with 400 BadRequest."""


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside `( ... )`."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_RE = re.compile(r"^([A-Za-z0-9._/-]+)\s*(==|!=|=)\s*([A-Za-z0-9._-]*)$")
_EXISTS_RE = re.compile(r"^(!?)\s*([A-Za-z0-9._/-]+)$")


def parse_label_selector(text: str | None) -> Predicate:
    """Return a predicate over an object's labels."""
    if not text:
        return lambda labels: True
    checks: list[Predicate] = []
    for term in _split_top_level(text):
        if m := _SET_RE.match(term):
            key, op, raw = m.group(1), m.group(2), m.group(3)
            values = frozenset(v.strip() for v in raw.split(",") if v.strip())
            if op == "in":
                checks.append(lambda l, k=key, vs=values: l.get(k) in vs)
            else:
                checks.append(lambda l, k=key, vs=values: l.get(k) not in vs)
        elif m := _EQ_RE.match(term):
            key, op, value = m.groups()
            if op == "!=":
                checks.append(lambda l, k=key, v=value: l.get(k) != v)
            else:
                checks.append(lambda l, k=key, v=value: l.get(k) == v)
        elif m := _EXISTS_RE.match(term):
            neg, key = m.groups()
            if neg:
                checks.append(lambda l, k=key: k not in l)
            else:
                checks.append(lambda l, k=key: k in l)
        else:
            raise SelectorError(f"unable to parse requirement: {term!r}")
    return lambda labels: all(c(labels) for c in checks)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string the API server compares a field selector with ("" when absent)."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text: str | None, allowed: frozenset[str]) -> Predicate:
    """Return a predicate over a whole object; unknown field labels are refused."""
    if not text:
        return lambda obj: True
    checks: list[Predicate] = []
    for term in _split_top_level(text):
        m = re.match(r"^([A-Za-z0-9._]+)\s*(==|!=|=)\s*(.*)$", term)
        if not m:
            raise SelectorError(f"invalid selector: {term!r}; can't understand {term!r}")
        path, op, value = m.group(1), m.group(2), m.group(3).strip()
        if path not in allowed:
            raise SelectorError(f'field label not supported: {path}')
        if op == "!=":
            checks.append(lambda o, p=path, v=value: field_value(o, p) != v)
        else:
            checks.append(lambda o, p=path, v=value: field_value(o, p) == v)
    return lambda obj: all(c(obj) for c in checks)
