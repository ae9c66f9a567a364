"""TLS server name patterns (SNI), as serverNames rules write them. Pure.

One home for what a pattern means, read by the validator
(policy/api/tls.py), `trace` and `diff`, and by xds/tls_listener.py, which
renders the same meaning as Envoy matchers:

- `api.example.com`: exactly that name (SNI is case-insensitive; patterns
  are stored lower-case);
- `*.example.com`: exactly one label before `.example.com`;
- `**.example.com`: one or more labels before it.

Neither wildcard matches `example.com` itself, as in Cilium.
"""

from __future__ import annotations

import enum

WILDCARD_ONE = "*"
WILDCARD_MANY = "**"


class Wildcard(enum.Enum):
    NONE = ""
    ONE_LABEL = WILDCARD_ONE
    LABELS = WILDCARD_MANY


def split(pattern: str) -> tuple[Wildcard, str]:
    """`**.example.com` -> (LABELS, "example.com"); a plain name -> (NONE, name)."""
    head, dot, suffix = pattern.partition(".")
    if dot and head in (WILDCARD_ONE, WILDCARD_MANY):
        return Wildcard(head), suffix
    return Wildcard.NONE, pattern


def matches(pattern: str, sni: str) -> bool:
    """Whether a pattern admits the server name a client sent."""
    sni = sni.lower()
    kind, suffix = split(pattern)
    if kind == Wildcard.NONE:
        return sni == pattern
    if not sni.endswith("." + suffix):
        return False
    labels = sni[: -len(suffix) - 1].split(".")
    if not all(labels):
        return False
    return len(labels) == 1 if kind == Wildcard.ONE_LABEL else True


def example(pattern: str) -> str:
    """A name the pattern admits (for diff's sample connections)."""
    kind, suffix = split(pattern)
    if kind == Wildcard.NONE:
        return pattern
    return f"x.{suffix}" if kind == Wildcard.ONE_LABEL else f"x.y.{suffix}"
