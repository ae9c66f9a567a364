"""Concrete HTTP requests that stand for one HTTP rule, for `policy diff`.

RE2 can check a string but not produce one, so a rule's regexes are turned
into samples by a deliberately small generator over the common subset of
the syntax: literals and escaped literals, `.`, classes (`[a-z]` gives its
first member, `\\d` `0`, `\\w` `a`), groups and alternation (first branch),
anchors, and the quantifiers `* + ? {n,m}` (taken at their minimum and at
one repetition more). Every candidate is kept only if RE2 fully matches it,
so an unsupported construct costs a sample, never a wrong one. Fields a
rule leaves unset get a few generic values. Pure.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import re2

from policy import dns_names, server_names
from policy.compiled import DNSRule, HTTPRule, SNIRule
from policy.trace import DNSQuery, HTTPRequest, TLSHello

_OPTS = re2.Options()
_OPTS.log_errors = False

GENERIC_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
GENERIC_PATHS = ("/", "/ciliate-diff-probe", "/v1/ciliate-diff-probe")
GENERIC_HOSTS = ("", "ciliate-diff-probe.example")
MAX_SAMPLES = 24

_CLASS_ESCAPES = {"d": "0", "w": "a", "s": " ", "D": "a", "W": "-", "S": "a"}


class _Unsupported(Exception):
    pass


class _Gen:
    """Recursive descent over a regex; each node yields (minimal, one-more) strings."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0

    def parse(self) -> tuple[str, str]:
        out = self._alt()
        if self.i != len(self.p):
            raise _Unsupported(self.p)
        return out

    def _peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def _alt(self) -> tuple[str, str]:
        first = self._seq()
        while self._peek() == "|":
            self.i += 1
            self._seq()  # later branches are parsed (to move on) but not used
        return first

    def _seq(self) -> tuple[str, str]:
        lo, hi = [], []
        while self._peek() not in ("", "|", ")"):
            a, b = self._atom()
            n_min, n_more = self._quant()
            lo.append(a * n_min)
            hi.append(b * n_more)
        return "".join(lo), "".join(hi)

    def _quant(self) -> tuple[int, int]:
        c = self._peek()
        if c in ("*", "?"):
            self.i += 1
            n = (0, 1)
        elif c == "+":
            self.i += 1
            n = (1, 2)
        elif c == "{":
            end = self.p.find("}", self.i)
            if end < 0:
                raise _Unsupported(self.p)
            body = self.p[self.i + 1 : end]
            self.i = end + 1
            lo_s, _, _ = body.partition(",")
            if not lo_s.strip().isdigit():
                raise _Unsupported(self.p)
            n = (int(lo_s), int(lo_s))
        else:
            return (1, 1)
        if self._peek() == "?":  # lazy quantifier: same strings
            self.i += 1
        return n

    def _atom(self) -> tuple[str, str]:
        c = self._peek()
        self.i += 1
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self._peek() == "?":
                raise _Unsupported(self.p)  # named groups, flags
            inner = self._alt()
            if self._peek() != ")":
                raise _Unsupported(self.p)
            self.i += 1
            return inner
        if c in ("^", "$"):
            return "", ""
        if c == ".":
            return "a", "a"
        if c == "[":
            ch = self._class()
            return ch, ch
        if c == "\\":
            e = self._peek()
            self.i += 1
            if e in _CLASS_ESCAPES:
                return _CLASS_ESCAPES[e], _CLASS_ESCAPES[e]
            if e.isalnum():
                raise _Unsupported(self.p)  # \b, \A, \pN, ...
            return e, e
        return c, c

    def _class(self) -> str:
        if self._peek() == "^":
            raise _Unsupported(self.p)
        first = ""
        start = True
        while True:
            c = self._peek()
            if c == "":
                raise _Unsupported(self.p)
            self.i += 1
            if c == "]" and not start:
                break
            if c == "\\":
                e = self._peek()
                self.i += 1
                c = _CLASS_ESCAPES.get(e, e)
            first = first or c
            start = False
        return first


@lru_cache(maxsize=4096)
def _regex(pattern: str):  # noqa: ANN202 - re2's compiled type has no public name
    return re2.compile(pattern, options=_OPTS)


@lru_cache(maxsize=4096)
def regex_samples(pattern: str, generic: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Strings RE2 fully matches with `pattern`: the generated ones first,
    then whichever of `generic` match. May be empty."""
    cands: list[str] = []
    try:
        cands.extend(_Gen(pattern).parse())
    except (_Unsupported, IndexError):
        pass
    cands.extend(generic)
    rx = _regex(pattern)
    return tuple(dict.fromkeys(s for s in cands if rx.fullmatch(s)))


def rule_samples(rule: HTTPRule | SNIRule | DNSRule | None) -> list[HTTPRequest] | list[TLSHello] | list[DNSQuery]:
    """Requests the rule admits (None: "any request", generic probes), at most
    MAX_SAMPLES, the most literal first. Empty if no sample could be built.
    A serverNames rule: a TLS connection per name (a wildcard's by a name it
    admits)."""
    if isinstance(rule, SNIRule):
        return [TLSHello(server_names.example(n)) for n in rule.server_names[:MAX_SAMPLES]]
    if isinstance(rule, DNSRule):
        return [DNSQuery(dns_names.example(sel)) for sel in rule.names[:MAX_SAMPLES]]
    rule = rule or HTTPRule()
    methods = regex_samples(rule.method, GENERIC_METHODS) if rule.method is not None else GENERIC_METHODS
    paths = regex_samples(rule.path, GENERIC_PATHS) if rule.path is not None else GENERIC_PATHS
    hosts = regex_samples(rule.host, GENERIC_HOSTS) if rule.host is not None else GENERIC_HOSTS
    headers = {h.name: (h.value if h.value is not None else "x") for h in rule.headers}
    # The most literal combination first, then one field away from it, ...
    combos = sorted(
        itertools.product(enumerate(methods), enumerate(paths), enumerate(hosts)),
        key=lambda c: c[0][0] + c[1][0] + c[2][0],
    )
    return [
        HTTPRequest(method=m, path=p, host=h, headers=headers) for (_, m), (_, p), (_, h) in combos[:MAX_SAMPLES]
    ]
