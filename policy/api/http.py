"""HTTP and DNS rules (Cilium's PortRuleHTTP, PortRuleDNS) and the L7 rule
kinds around them.

method, path and host are RE2 regexes, checked with RE2 itself because that
is what Envoy runs; an empty one means "not set", as in Cilium. Headers are
`Name` (present) or `Name: value` (exact), or headerMatches entries. A DNS
rule (and a toFQDNs item, peers.py) is one `matchName` or one `matchPattern`
(policy/dns_names.py checks them). Other L7 kinds are a clear error. Pure.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import PlainValidator, model_validator

from policy import re2_check
from policy.api.base import Strict
from policy.api.problems import fail, type_name, unsupported
from policy.dns_names import DNSNameError, NameSelector, check_match_name, check_match_pattern

def compile_regex(pattern: str) -> str | None:
    """None if RE2 accepts the pattern, else RE2's reason (remembered, so the
    xDS renderer does not compile it again)."""
    return re2_check.problem(pattern)


def split_header(text: str) -> tuple[str, str | None]:
    """`Name` -> (name, None); `Name: value` -> (name, value), both stripped."""
    name, sep, value = text.partition(":")
    return name.strip(), (value.strip() if sep else None)


def _token(name: str) -> bool:
    return bool(name) and not any(c.isspace() for c in name)


def _regex(v: Any) -> str:
    if not isinstance(v, str):
        fail(f"must be a string, got {type_name(v)}")
    if why := compile_regex(v):
        fail(why)
    return v


def _header(v: Any) -> str:
    if not isinstance(v, str):
        fail(f"must be a string, got {type_name(v)}")
    if not _token(split_header(v)[0]):
        fail(f"bad header {v!r}: expected 'Name' or 'Name: value'")
    return v


def _header_name(v: Any) -> str:
    if not isinstance(v, str):
        fail(f"must be a string, got {type_name(v)}")
    if not _token(v):
        fail("header name must be a non-empty token")
    return v


Regex = Annotated[str, PlainValidator(_regex)]
Header = Annotated[str, PlainValidator(_header)]


class HeaderMatch(Strict):
    name: Annotated[str, PlainValidator(_header_name)]
    value: str | None = None
    mismatch: Annotated[Any, unsupported("headerMatches mismatch actions")] = None
    secret: Annotated[Any, unsupported("secret header values")] = None


class PortRuleHTTP(Strict):
    """One HTTP rule: every field set must match (rules of a port are ORed)."""

    method: Regex | None = None
    path: Regex | None = None
    host: Regex | None = None
    headers: list[Header] | None = None
    headerMatches: list[HeaderMatch] | None = None


def _dns_text(check: Any) -> Any:
    def validate(v: Any) -> str:
        try:
            return check(v)
        except DNSNameError as e:
            fail(str(e))
    return PlainValidator(validate)


class FQDNSelector(Strict):
    """A toFQDNs item or a DNS rule: exactly one of a name or a pattern, as
    Cilium's FQDNSelector. Both are kept canonical (lower case, one trailing
    dot), so case and trailing-dot variants are one rule."""

    matchName: Annotated[str, _dns_text(check_match_name)] | None = None
    matchPattern: Annotated[str, _dns_text(check_match_pattern)] | None = None

    @model_validator(mode="after")
    def _one(self) -> FQDNSelector:
        if (self.matchName is None) == (self.matchPattern is None):
            fail("must set exactly one of matchName and matchPattern")
        return self

    def selector(self) -> NameSelector:
        return NameSelector(self.matchName, self.matchPattern)


class L7Rules(Strict):
    http: list[PortRuleHTTP] | None = None
    kafka: Annotated[Any, unsupported("Kafka L7 rules")] = None
    dns: list[FQDNSelector] | None = None
    l7proto: Annotated[Any, unsupported("generic L7 parsers (l7proto)")] = None
    l7: Annotated[Any, unsupported("generic L7 rules")] = None

    @model_validator(mode="after")
    def _one_kind(self) -> L7Rules:
        # As Cilium: one port's proxy speaks one protocol.
        if self.http is not None and self.dns is not None:
            fail("multiple L7 protocol rule types in one rule: http and dns need separate toPorts items")
        return self
