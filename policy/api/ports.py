"""Ports and port rules: numbers, ranges, protocols, and what HTTP needs.

A port is a number or a numeric string (Cilium writes "80"); 0 or absent
means every port; `endPort` makes a range. Cilium's `toPorts` items may
carry L7 rules or TLS server names, which need one TCP port; deny rules may
not carry either.
NetworkPolicy ports default to TCP and know no `ANY`. Pure.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import PlainValidator, ValidationInfo, field_validator

from policy.api.base import Strict
from policy.api.http import L7Rules
from policy.api.problems import UP, Loc, fail, fail_all, reject, type_name, unsupported
from policy.api.tls import ServerName
from policy.compiled import ALL_PORTS, PortRange, Protocol


def _port(v: Any) -> int:
    if isinstance(v, str):
        digits = v.strip()
        if not (digits.isascii() and digits.isdigit()):
            fail(f"not supported: named port {v!r} (use a number)")
        v = int(digits)
    if isinstance(v, bool) or not isinstance(v, int):
        fail(f"must be a port number, got {type_name(v)}")
    if not 0 <= v <= 65535:
        fail(f"port {v} out of range 0-65535")
    return v


def _protocol(allowed: dict[str, Protocol]) -> PlainValidator:
    def check(v: Any) -> Protocol:
        if not isinstance(v, str):
            fail(f"must be a string, got {type_name(v)}")
        up = v.upper()
        if up == "SCTP":
            fail("not supported: protocol SCTP")
        if up not in allowed:
            fail(f"unknown protocol {v!r}: expected {', '.join(allowed)}")
        return allowed[up]

    return PlainValidator(check)


PortNumber = Annotated[int, PlainValidator(_port)]


class PortProtocol(Strict):
    """Cilium's port: protocol ANY unless named."""

    port: PortNumber | None = None
    endPort: PortNumber | None = None
    protocol: Annotated[Protocol, _protocol({"TCP": Protocol.TCP, "UDP": Protocol.UDP, "ANY": Protocol.ANY})] = Protocol.ANY

    # Field validators (they see the fields declared before them) rather than
    # a check of the whole object, which a wrong sibling field would skip.
    @field_validator("endPort")
    @classmethod
    def _range(cls, end: int | None, info: ValidationInfo) -> int | None:
        if end is None or "port" not in info.data:
            return end
        port = info.data["port"]
        if not port:
            fail("endPort needs a port")
        if end < port:
            fail(f"endPort {end} is below port {port}")
        return end

    @property
    def ports(self) -> PortRange:
        if not self.port:
            return ALL_PORTS
        return PortRange(self.port, self.endPort if self.endPort is not None else self.port)

    @property
    def single(self) -> bool:
        return bool(self.port) and self.endPort in (None, self.port)


class NetworkPolicyPort(PortProtocol):
    protocol: Annotated[Protocol, _protocol({"TCP": Protocol.TCP, "UDP": Protocol.UDP})] = Protocol.TCP


# The proxy never holds a key: it reads the ClientHello's server name and
# forwards the bytes as they are.
_NO_INTERCEPTION = "not supported: TLS interception (the proxy neither terminates nor originates TLS; serverNames filters TLS without decrypting it)"


def _one_tcp_port(ports: list[PortProtocol] | None, what: str) -> None:
    """An L7 rule gets one proxy listener per TCP port: refuse other ports,
    located at each port that does not fit (called by a field declared after
    `ports`, hence UP)."""
    if not ports:
        fail(f"{what} need a single port, got all ports", at=UP + ("ports",))
    problems: list[tuple[Loc, str]] = []
    for i, p in enumerate(ports):
        if p.protocol == Protocol.UDP:
            problems.append((UP + ("ports", i, "protocol"), f"{what} need TCP, got UDP"))
        elif not p.single:
            kind = "a port range (endPort)" if p.port else "all ports"
            problems.append((UP + ("ports", i), f"{what} need a single port, got {kind}"))
    fail_all(problems)


class PortRule(Strict):
    """A `toPorts` item: ports ORed (none = all), optionally with L7 rules
    or TLS server names."""

    ports: list[PortProtocol] | None = None
    rules: L7Rules | None = None
    terminatingTLS: Annotated[Any, reject(_NO_INTERCEPTION)] = None
    originatingTLS: Annotated[Any, reject(_NO_INTERCEPTION)] = None
    serverNames: list[ServerName] | None = None
    listener: Annotated[Any, unsupported("custom Envoy listeners")] = None

    @field_validator("rules")
    @classmethod
    def _http_needs_one_tcp_port(cls, rules: Any, info: ValidationInfo) -> Any:
        """Located at the ports that do not fit (`rules` follows `ports`)."""
        if not (isinstance(rules, L7Rules) and rules.http) or "ports" not in info.data:
            return rules
        _one_tcp_port(info.data["ports"], "HTTP rules")
        return rules

    @field_validator("serverNames")
    @classmethod
    def _sni_alone_on_one_tcp_port(cls, names: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if not names:
            return names
        rules = info.data.get("rules")
        # As Cilium: L7 rules beside serverNames would need the proxy to
        # decrypt (terminatingTLS), which it never does.
        if isinstance(rules, L7Rules) and rules.http is not None:
            fail("ServerNames are not allowed with L7 rules without TLS termination")
        if "ports" in info.data:
            _one_tcp_port(info.data["ports"], "serverNames")
        return names


class DenyPortRule(PortRule):
    """A deny rule's `toPorts` item: L4 only."""

    rules: Annotated[Any, reject("L7 rules are not allowed in deny rules", null_ok=True)] = None
    serverNames: Annotated[Any, reject("serverNames are not allowed in deny rules", null_ok=True)] = None
