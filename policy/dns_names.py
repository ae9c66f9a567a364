"""DNS names in policy: `matchName` and `matchPattern` as Cilium reads them
(toFQDNs selectors and L7 `dns` rules). Pure.

Names compare in canonical form: lower case, fully qualified (one trailing
dot), so `API.Example.com` and `api.example.com.` are one name. A pattern is
a name in which
- `*` alone (or `**` alone) matches every name, the root `.` included;
- `*` inside a label matches zero or more DNS characters of that label
  (`*.example.com` matches `a.example.com`, not `example.com` nor
  `a.b.example.com`; `ci*.io` matches `cilium.io`);
- `**.` matches one or more whole labels (`**.example.com` matches
  `a.example.com` and `a.b.example.com`, not `example.com`), as in Cilium
  1.19; a `**` not followed by a dot matches a label, a dot and the start of
  the next label, as Cilium's does.
DNS characters are letters, digits, `-` and `_` (RFC 2782 service labels).

Matching runs on RE2 (linear time): the names come from pods, which may send
anything, and a pattern like `**.**.**.x` must not backtrack on a long one.
A name that is not plain DNS characters and dots (dnspython's text form
escapes anything else, e.g. `a\\.b`) matches only the match-all pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import re2

MAX_NAME = 253  # characters of a name's text form, trailing dot aside (RFC 1035's 255 octets on the wire)
MAX_LABEL = 63

_NAME_CHARS = re.compile(r"[-a-zA-Z0-9_.]+")
_PATTERN_CHARS = re.compile(r"[-a-zA-Z0-9_.*]+")
_DNS_CHAR = "[-a-z0-9_]"
_MATCH_ALL = f"(?:{_DNS_CHAR}+\\.)+|\\."  # any name, and the root

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


class DNSNameError(ValueError):
    """A matchName or matchPattern that cannot be used; the message says why."""


def canonical(name: str) -> str:
    """Lower case with exactly one trailing dot; the root stays `.`."""
    name = name.strip().lower()
    if name in ("", "."):
        return "."
    return name.rstrip(".") + "."


def _check_labels(text: str, what: str) -> None:
    body = text[:-1] if text.endswith(".") else text
    if len(body) > MAX_NAME:
        raise DNSNameError(f"{what} {text!r} is longer than {MAX_NAME} characters")
    if body and any(label == "" for label in body.split(".")):
        raise DNSNameError(f"{what} {text!r} has an empty label (two dots in a row, or a leading dot)")
    for label in body.split("."):
        if len(label) > MAX_LABEL:
            raise DNSNameError(f"{what} {text!r} has a label longer than {MAX_LABEL} characters")


def _checked_text(value: object, field: str, chars: re.Pattern, allowed: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DNSNameError(f"{field} must be a non-empty string")
    text = value.strip()
    if not chars.fullmatch(text):
        raise DNSNameError(f"{field} {text!r} may contain only {allowed}")
    return text


def check_match_name(name: str) -> str:
    """The canonical form of a valid matchName; DNSNameError otherwise."""
    text = _checked_text(name, "matchName", _NAME_CHARS, "letters, digits, '-', '_' and '.'")
    if text != ".":
        _check_labels(text, "matchName")
    return canonical(text)


def check_match_pattern(pattern: str) -> str:
    """The canonical form of a valid matchPattern; DNSNameError otherwise."""
    text = _checked_text(pattern, "matchPattern", _PATTERN_CHARS, "letters, digits, '-', '_', '.' and '*'")
    if "***" in text:
        raise DNSNameError(f"matchPattern {text!r}: at most two '*' in a row ('**.' is any number of labels)")
    if text in ("*", "**"):
        return text
    _check_labels(text, "matchPattern")
    return canonical(text)


def pattern_regex(pattern: str) -> str:
    """The RE2 regex (full match) of a canonical matchPattern."""
    if pattern in ("*", "**"):
        return _MATCH_ALL
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**.", i):
            out.append(f"(?:{_DNS_CHAR}+\\.)+")
            i += 3
        elif pattern.startswith("**", i):
            out.append(f"{_DNS_CHAR}+\\.{_DNS_CHAR}*")
            i += 2
        elif c == "*":
            out.append(f"{_DNS_CHAR}*")
            i += 1
        elif c == ".":
            out.append("\\.")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@lru_cache(maxsize=4096)
def _compiled(pattern: str):
    return re2.compile(pattern_regex(pattern), options=_OPTIONS)


def _well_formed(name: str) -> bool:
    # No empty label: `*` inside a label may match nothing, and must not
    # make `*.example.com` match `.example.com`.
    return name == "." or (not name.startswith(".") and ".." not in name)


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether canonical `pattern` matches `name` (any case, dot or not)."""
    name = canonical(name)
    return _well_formed(name) and _compiled(pattern).fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class NameSelector:
    """One toFQDNs entry or one DNS rule: a name, or a pattern (canonical)."""

    match_name: str | None = None
    match_pattern: str | None = None

    def matches(self, name: str) -> bool:
        if self.match_name is not None and canonical(name) == self.match_name:
            return True
        return self.match_pattern is not None and pattern_matches(self.match_pattern, name)

    def __str__(self) -> str:
        parts = []
        if self.match_name is not None:
            parts.append(f"matchName: {self.match_name}")
        if self.match_pattern is not None:
            parts.append(f"matchPattern: {self.match_pattern}")
        return ", ".join(parts)


def example(sel: NameSelector) -> str:
    """A name the selector admits (diff's sample queries)."""
    if sel.match_name is not None:
        return sel.match_name
    pattern = sel.match_pattern or "*"
    if pattern in ("*", "**"):
        return "example.com."
    out = pattern.replace("**.", "x.y.").replace("**", "x.y").replace("*", "x")
    return out if pattern_matches(pattern, out) else "example.com."
