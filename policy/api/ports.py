"""Ports and port rules: numbers, names, ranges, protocols, ICMP types, and
what HTTP needs.

A port is a number, a numeric string (Cilium writes "80") or a name (an
IANA service name such as `http`, resolved per endpoint from its container
ports: policy/named_ports.py); 0 or absent means every port; `endPort`
makes a range of numbers. Cilium's `toPorts` items may carry L7 rules or
TLS server names, which need one TCP port; deny rules may not carry either.
NetworkPolicy ports default to TCP and know no `ANY`. `icmps` names
ICMP/ICMPv6 message types by number or by Cilium's CamelCase name. Pure.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import PlainValidator, ValidationInfo, field_validator

from policy.api.base import Strict
from policy.api.http import L7Rules
from policy.api.problems import UP, Loc, fail, fail_all, reject, type_name, unsupported
from policy.api.tls import ServerName
from policy.compiled import ALL_PORTS, PortRange, Protocol
from policy.icmp_types import ICMP_FAMILIES, icmp_type
from policy.named_ports import port_name_problem

# A named port (policy/named_ports.py) has no number until it is resolved
# for an endpoint; until then its range is port 0 alone, which no TCP, UDP
# or SCTP traffic uses, so code that forgot the name would open nothing.
UNRESOLVED = PortRange(0, 0)


def _port(v: Any) -> int | str:
    if isinstance(v, str):
        text = v.strip()
        if not (text.isascii() and text.isdigit()):
            problem = port_name_problem(text)
            if problem is not None:
                fail(f"invalid port {v!r}: not a number, and not a port name ({problem})")
            return text.lower()  # names are matched case-insensitively, as Cilium does
        v = int(text)
    if isinstance(v, bool) or not isinstance(v, int):
        fail(f"must be a port number or name, got {type_name(v)}")
    if not 0 <= v <= 65535:
        fail(f"port {v} out of range 0-65535")
    return v


def _end_port(v: Any) -> int:
    out = _port(v)
    if isinstance(out, str):
        fail(f"endPort must be a number, got the name {out!r}")
    return out


def _protocol(allowed: dict[str, Protocol], hint: str = "") -> PlainValidator:
    def check(v: Any) -> Protocol:
        if not isinstance(v, str):
            fail(f"must be a string, got {type_name(v)}")
        up = v.upper()
        if up not in allowed:
            fail(f"unknown protocol {v!r}: expected {', '.join(allowed)}{hint}")
        return allowed[up]

    return PlainValidator(check)


PortNumber = Annotated[int | str, PlainValidator(_port)]
EndPortNumber = Annotated[int, PlainValidator(_end_port)]
_L4 = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}
_ICMP_HINT = " (ICMP types are matched with `icmps`)"


class PortProtocol(Strict):
    """Cilium's port: protocol ANY (TCP, UDP and SCTP) unless named."""

    port: PortNumber | None = None
    endPort: EndPortNumber | None = None
    protocol: Annotated[Protocol, _protocol(_L4 | {"ANY": Protocol.ANY}, _ICMP_HINT)] = Protocol.ANY

    # Field validators (they see the fields declared before them) rather than
    # a check of the whole object, which a wrong sibling field would skip.
    @field_validator("endPort")
    @classmethod
    def _range(cls, end: int | None, info: ValidationInfo) -> int | None:
        if end is None or "port" not in info.data:
            return end
        port = info.data["port"]
        if isinstance(port, str):
            fail(f"endPort needs a numeric port, got the name {port!r}")
        if not port:
            fail("endPort needs a port")
        if end < port:
            fail(f"endPort {end} is below port {port}")
        return end

    @property
    def name(self) -> str | None:
        return self.port if isinstance(self.port, str) else None

    @property
    def ports(self) -> PortRange:
        if isinstance(self.port, str):
            return UNRESOLVED
        if not self.port:
            return ALL_PORTS
        return PortRange(self.port, self.endPort if self.endPort is not None else self.port)

    @property
    def single(self) -> bool:
        return bool(self.port) and (isinstance(self.port, str) or self.endPort in (None, self.port))


class NetworkPolicyPort(PortProtocol):
    protocol: Annotated[Protocol, _protocol(_L4)] = Protocol.TCP


def _icmp_family(v: Any) -> str:
    if v not in ICMP_FAMILIES:
        fail(f"unknown family {v!r}: expected IPv4 or IPv6")
    return v


class ICMPField(Strict):
    """One ICMP message type: `type` a number 0-255 or the type's CamelCase
    name in its family (IPv4 unless `family: IPv6`)."""

    family: Annotated[str, PlainValidator(_icmp_family)] = "IPv4"
    type: Any

    @field_validator("type")
    @classmethod
    def _known(cls, v: Any, info: ValidationInfo) -> int:
        family = info.data.get("family")
        if family is None:  # the family itself was wrong; that is the error to read
            return 0
        number, problem = icmp_type(family, v)
        if problem is not None:
            fail(problem)
        return number

    @property
    def protocol(self) -> Protocol:
        return Protocol.ICMPV6 if self.family == "IPv6" else Protocol.ICMP


class ICMPRule(Strict):
    fields: list[ICMPField] | None = None


# The proxy never holds a key: it reads the ClientHello's server name and
# forwards the bytes as they are.
_NO_INTERCEPTION = "not supported: TLS interception (the proxy neither terminates nor originates TLS; serverNames filters TLS without decrypting it)"


def _one_tcp_port(ports: list[PortProtocol] | None, what: str, protocols: tuple[Protocol, ...] = (Protocol.TCP,)) -> None:
    """An L7 rule gets one proxy listener per port: refuse other ports and
    protocols, located at each port that does not fit (called by a field
    declared after `ports`, hence UP). DNS rules take UDP as well as TCP."""
    if not ports:
        fail(f"{what} need a single port, got all ports", at=UP + ("ports",))
    problems: list[tuple[Loc, str]] = []
    for i, p in enumerate(ports):
        if p.protocol not in protocols + (Protocol.ANY,):
            wanted = " or ".join(x.name for x in protocols)
            problems.append((UP + ("ports", i, "protocol"), f"{what} need {wanted}, got {p.protocol.name}"))
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
        if not isinstance(rules, L7Rules) or "ports" not in info.data:
            return rules
        if rules.http:
            _one_tcp_port(info.data["ports"], "HTTP rules")
        elif rules.dns:
            _one_tcp_port(info.data["ports"], "DNS rules", (Protocol.UDP, Protocol.TCP))
        return rules

    @field_validator("serverNames")
    @classmethod
    def _sni_alone_on_one_tcp_port(cls, names: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if not names:
            return names
        rules = info.data.get("rules")
        # As Cilium: L7 rules beside serverNames would need the proxy to
        # decrypt (terminatingTLS), which it never does.
        if isinstance(rules, L7Rules) and (rules.http is not None or rules.dns is not None):
            fail("ServerNames are not allowed with L7 rules without TLS termination")
        if "ports" in info.data:
            _one_tcp_port(info.data["ports"], "serverNames")
        return names


class DenyPortRule(PortRule):
    """A deny rule's `toPorts` item: L4 only."""

    rules: Annotated[Any, reject("L7 rules are not allowed in deny rules", null_ok=True)] = None
    serverNames: Annotated[Any, reject("serverNames are not allowed in deny rules", null_ok=True)] = None
