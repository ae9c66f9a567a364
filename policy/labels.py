"""Kubernetes label syntax, checked in one place.

Used by policy/api/selectors.py for selector keys and values and by the agent's
REST model for the labels the CNI plugin registers. A key is an optional
DNS-1123 subdomain prefix (at most 253 characters) and '/', then a name of
at most 63 characters; a value is empty or at most 63 characters; names and
values start and end with an ASCII letter or digit and hold only letters,
digits, '-', '_' and '.' in between (Kubernetes' own rules, so a label that
the API server would refuse is refused here too). Cilium's keys may carry a
source in front ("k8s:app", "any:app"); `selector_key_problem` accepts that.
Pure: every function returns None when the input is fine, else the reason.
"""

from __future__ import annotations

import re

NAME_MAX = 63
PREFIX_MAX = 253
VALUE_MAX = 63

_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_SOURCE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_CHARSET = "start and end with a letter or digit and hold only letters, digits, '-', '_' and '.'"
_SHOWN = 40  # characters of a bad key or value quoted in a reason


def shown(text: str) -> str:
    """A key or value for an error message: quoted, and cut when very long."""
    if len(text) <= _SHOWN:
        return repr(text)
    return f"{text[:_SHOWN]!r}... ({len(text)} characters)"


def name_problem(name: str, what: str = "label name") -> str | None:
    if not name:
        return f"{what} must not be empty"
    if len(name) > NAME_MAX:
        return f"{what} {shown(name)} is longer than {NAME_MAX} characters"
    if not _NAME.fullmatch(name):
        return f"{what} {shown(name)} must {_CHARSET}"
    return None


def key_problem(key: str) -> str | None:
    """A Kubernetes label key: [prefix/]name."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return f"label key {shown(key)} has an empty prefix before '/'"
        if len(prefix) > PREFIX_MAX:
            return f"label key prefix {shown(prefix)} is longer than {PREFIX_MAX} characters"
        if not _DNS_SUBDOMAIN.fullmatch(prefix):
            return f"label key prefix {shown(prefix)} must be a DNS subdomain (lower-case letters, digits, '-' and '.')"
    return name_problem(name, "label key" if not slash else "label key name")


def selector_key_problem(key: str) -> str | None:
    """A label key as Cilium writes it: an optional "source:" in front of a Kubernetes key."""
    source, colon, rest = key.partition(":")
    if colon:
        if not _SOURCE.fullmatch(source):
            return f"label source {shown(source)} in key {shown(key)} must {_CHARSET}"
        return key_problem(rest)
    return key_problem(key)


def value_problem(value: str) -> str | None:
    if value == "":
        return None
    if len(value) > VALUE_MAX:
        return f"label value {shown(value)} is longer than {VALUE_MAX} characters"
    if not _NAME.fullmatch(value):
        return f"label value {shown(value)} must be empty or {_CHARSET}"
    return None


def label_items(items: list[str], flag: str) -> dict[str, str]:
    """KEY=VALUE items (a repeatable command-line flag) -> labels; ValueError
    naming the flag, the item and what is wrong with it."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        why = "expected KEY=VALUE" if not sep else key_problem(key) or value_problem(value)
        if why:
            raise ValueError(f"bad {flag} {item!r}: {why}")
        out[key] = value
    return out
