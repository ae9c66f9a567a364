"""Policy tests: flows with the verdict a policy set must give them
(`ciliate policy test`), as a team keeps them in git beside its policies.

A test file is a YAML document of its own kind, so it can live in a policy
directory (the loader skips it, policy/load.py):

    apiVersion: ciliate.io/v1
    kind: PolicyTest
    metadata: {name: starwars}
    spec:
      policies: [starwars]          # paths relative to this file (optional)
      tests:
      - name: tiefighter may land
        from: {labels: {org: empire, class: tiefighter}}
        to: {labels: {org: empire, class: deathstar}}
        port: 80                     # protocol: TCP by default
        http: {method: POST, path: /v1/request-landing}
        expect: allowed

Each test is one flow through `policy.trace` on a state compiled for its two
ends (each `labels` end is an endpoint with those labels; `ip` and `entity`
ends are outside addresses and reserved identities): the same answer as
`ciliate policy trace`. `dns` makes the flow a DNS query for that name;
`resolve` says what names resolved to, for toFQDNs. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from policy.api.base import Strict
from policy.api.problems import fail, policy_errors
from policy.compiled import Protocol
from policy.compiler import compile_state
from policy.dns_names import DNSNameError, check_match_name
from policy.endpoint import Endpoint
from policy.errors import CiliateError, PolicyErrors
from policy.families import Stack
from policy.load import is_test_document  # noqa: F401 - re-exported for the CLI
from policy.fqdn_resolve import resolve_all as resolve_fqdns
from policy.model import Policy
from policy.services import resolve_all as resolve_services
from policy.trace import HTTPRequest, Party, trace


_PROTOCOLS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP, "ICMP": Protocol.ICMP,
              "ICMPV6": Protocol.ICMPV6}


class End(Strict):
    """One end of a flow: exactly one of an endpoint's labels, an address, an entity."""

    labels: dict[str, str] | None = None
    ip: str | None = None
    entity: str | None = None

    @model_validator(mode="after")
    def _one(self) -> End:
        if sum(v is not None for v in (self.labels, self.ip, self.entity)) != 1:
            fail("must set exactly one of labels, ip and entity")
        if self.ip is not None:
            try:
                ip_address(self.ip)
            except ValueError:
                fail(f"ip {self.ip!r} is not an IPv4 or IPv6 address")
        return self

    def text(self) -> str:
        if self.labels is not None:
            return ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "(no labels)"
        return self.ip if self.ip is not None else f"entity:{self.entity}"


class HTTPCase(Strict):
    method: str = "GET"
    path: str = "/"
    host: str = ""
    headers: dict[str, str] = Field(default_factory=dict)


class Case(Strict):
    name: str = Field(min_length=1)
    src: End = Field(alias="from")
    dst: End = Field(alias="to")
    port: int = Field(ge=0, le=65535)
    protocol: str = "TCP"
    http: HTTPCase | None = None
    sni: str | None = None
    dns: str | None = None
    resolve: dict[str, list[str]] = Field(default_factory=dict)
    expect: Literal["allowed", "denied"]

    @model_validator(mode="after")
    def _checked(self) -> Case:
        if self.protocol.upper() not in _PROTOCOLS:
            fail(f"unknown protocol {self.protocol!r}: expected one of {', '.join(_PROTOCOLS)}", at=("protocol",))
        if self.dns is not None:
            try:
                check_match_name(self.dns)
            except DNSNameError as e:
                fail(str(e), at=("dns",))
        for name, addrs in self.resolve.items():
            try:
                check_match_name(name)
                [ip_address(a) for a in addrs]
            except (DNSNameError, ValueError) as e:
                fail(str(e), at=("resolve", name))
        return self

    def flow(self) -> str:
        what = f"{self.port}/{self.protocol.upper()}"
        if self.http is not None:
            what += f" {self.http.method} {self.http.path}"
        if self.dns is not None:
            what += f" DNS {self.dns}"
        return f"{self.src.text()} -> {self.dst.text()} {what}"


class Spec(Strict):
    policies: list[str] = Field(default_factory=list)
    tests: list[Case] = Field(min_length=1)


class Metadata(Strict):
    name: str = Field(min_length=1)


class TestDocument(Strict):
    apiVersion: Literal["ciliate.io/v1"]
    kind: Literal["PolicyTest"]
    metadata: Metadata
    spec: Spec


def parse_test_document(doc: Any, source: str) -> TestDocument:
    """The document, or PolicyErrors naming the file, the field and why."""
    try:
        return TestDocument.model_validate(doc)
    except ValidationError as e:
        raise PolicyErrors(policy_errors(e, source, None)) from None


@dataclass(frozen=True)
class Outcome:
    case: Case
    got: str  # "allowed" | "denied" | "error"
    reason: str

    @property
    def passed(self) -> bool:
        return self.got == self.case.expect


def _party(end: End, endpoint_id: int, endpoints: list[Endpoint]) -> Party:
    if end.labels is not None:
        endpoints.append(Endpoint(endpoint_id, dict(end.labels)))
        return Party.endpoint(endpoint_id)
    if end.ip is not None:
        return Party.address(end.ip)
    return Party.entity(end.entity or "")


def run_case(policies: list[Policy], case: Case, stack: Stack = Stack.DUAL) -> Outcome:
    endpoints: list[Endpoint] = []
    try:
        src = _party(case.src, 1, endpoints)
        dst = _party(case.dst, 2, endpoints)
        names = {check_match_name(n): {ip_address(a) for a in addrs} for n, addrs in case.resolve.items()}
        resolved, _ = resolve_services(policies, None)
        resolved, _ = resolve_fqdns(resolved, names)
        state = compile_state(resolved, endpoints, stack=stack)
        http = None
        if case.http is not None:
            http = HTTPRequest(method=case.http.method, path=case.http.path, host=case.http.host,
                               headers={k.lower(): (v,) for k, v in case.http.headers.items()})
        result = trace(state, src, dst, case.port, _PROTOCOLS[case.protocol.upper()], http,
                       case.sni.lower() if case.sni else None, case.dns)
    except CiliateError as e:
        return Outcome(case, "error", str(e))
    return Outcome(case, result.verdict, result.reason)
