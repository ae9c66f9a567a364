"""The DNS proxy's reading and writing of DNS messages, on dnspython. Pure.

Everything here reads bytes a pod or a resolver sent, so everything is
hostile: dnspython refuses malformed messages (truncated records, pointer
loops, labels over 63 octets, names over 255), and on top of it:
- a query is one question, opcode QUERY, not a response;
- a response must answer that query: same id, same question, QR set;
- its addresses are those of the question's name and of the names its CNAME
  chain leads to (at most MAX_CHAIN links, no loop): an A record for a name
  nobody asked about is ignored, so a resolver cannot make a pod's answer
  carry an address for another name;
- at most MAX_ADDRESSES addresses per answer are kept.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from policy.dns_names import canonical

MAX_CHAIN = 16  # CNAME links followed from the question's name
MAX_ADDRESSES = 1000  # per answer; Cilium's per-hostname default limit is of this order
MAX_MESSAGE = 65535  # a TCP DNS message's length field; UDP payloads are smaller


class Reject(enum.Enum):
    """How a denied query is answered (Cilium's --tofqdns-dns-reject-response-code)."""

    REFUSED = "refused"
    NAME_ERROR = "nameError"

    @property
    def rcode(self) -> dns.rcode.Rcode:
        return dns.rcode.REFUSED if self is Reject.REFUSED else dns.rcode.NXDOMAIN


class MessageError(ValueError):
    """A message the proxy will not pass on; the text says why (for the
    monitor and the metrics' reason label)."""


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    name: str  # canonical: lower case, trailing dot
    qtype: str  # "A", "AAAA", "TXT", ... (dnspython's text form)
    message: dns.message.Message


@dataclass(frozen=True, slots=True)
class Answer:
    """What a response says about the query's name."""

    rcode: str  # "NOERROR", "NXDOMAIN", ...
    names: tuple[str, ...]  # the query's name, then its CNAME chain (canonical)
    addresses: tuple[tuple[IPv4Address | IPv6Address, int], ...]  # (address, TTL seconds), first-seen order


def _name_text(name: dns.name.Name) -> str:
    return canonical(name.to_text())


def parse_query(wire: bytes) -> Query:
    if len(wire) > MAX_MESSAGE:
        raise MessageError("query longer than a DNS message can be")
    try:
        msg = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError) as e:
        raise MessageError(f"malformed query: {type(e).__name__}") from e
    if msg.flags & dns.flags.QR:
        raise MessageError("a response where a query was expected")
    if msg.opcode() != dns.opcode.QUERY:
        raise MessageError(f"opcode {dns.opcode.to_text(msg.opcode())} is not QUERY")
    if len(msg.question) != 1:
        raise MessageError(f"{len(msg.question)} questions; a query has exactly one")
    q = msg.question[0]
    if q.rdclass != dns.rdataclass.IN:
        raise MessageError(f"class {dns.rdataclass.to_text(q.rdclass)} is not IN")
    return Query(msg.id, _name_text(q.name), dns.rdatatype.to_text(q.rdtype), msg)


def query_id(wire: bytes) -> int | None:
    """The id of a message too broken to parse, to answer it FORMERR; None
    when not even the header is there."""
    return int.from_bytes(wire[:2], "big") if len(wire) >= 12 else None


def refusal(query: Query, reject: Reject) -> bytes:
    """The answer to a denied query: its id and question, the chosen rcode,
    no records; RA set as a recursive resolver's answer would have it."""
    resp = dns.message.make_response(query.message, recursion_available=True)
    resp.set_rcode(reject.rcode)
    return resp.to_wire()


def header_only(msg_id: int, rcode: int = dns.rcode.FORMERR) -> bytes:
    """An answer with no question to echo: FORMERR for a query that could
    not be parsed, REFUSED for one the proxy has no room for."""
    resp = dns.message.Message(id=msg_id)
    resp.flags = dns.flags.QR | dns.flags.RA
    resp.set_rcode(rcode)
    return resp.to_wire()


def parse_response(wire: bytes, query: Query) -> Answer:
    if len(wire) > MAX_MESSAGE:
        raise MessageError("response longer than a DNS message can be")
    try:
        msg = dns.message.from_wire(wire)
    except dns.message.Truncated as e:
        # TC set and records cut: the client retries over TCP; nothing to learn.
        raise MessageError("truncated response") from e
    except (dns.exception.DNSException, ValueError) as e:
        raise MessageError(f"malformed response: {type(e).__name__}") from e
    if not msg.flags & dns.flags.QR:
        raise MessageError("a query where a response was expected")
    if msg.id != query.id:
        raise MessageError("response id does not match the query")
    if len(msg.question) != 1 or _name_text(msg.question[0].name) != query.name or \
            dns.rdatatype.to_text(msg.question[0].rdtype) != query.qtype:
        raise MessageError("response question does not match the query")
    chain = [query.name]
    by_owner: dict[str, list] = {}
    for rrset in msg.answer:
        if rrset.rdclass == dns.rdataclass.IN:
            by_owner.setdefault(_name_text(rrset.name), []).append(rrset)
    # Follow CNAMEs from the question's name: each link must be an answer
    # record owned by the previous name.
    while len(chain) <= MAX_CHAIN:
        target = next(
            (_name_text(rr.target) for rrset in by_owner.get(chain[-1], ()) if rrset.rdtype == dns.rdatatype.CNAME for rr in rrset),
            None,
        )
        if target is None or target in chain:
            break
        chain.append(target)
    addresses: dict[IPv4Address | IPv6Address, int] = {}
    for owner in chain:
        for rrset in by_owner.get(owner, ()):
            if rrset.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
                continue
            for rr in rrset:
                if len(addresses) >= MAX_ADDRESSES:
                    break
                addr = ip_address(rr.address)
                # The shortest TTL an address was given: it leaves the policy no later than any record says.
                addresses[addr] = min(addresses.get(addr, int(rrset.ttl)), int(rrset.ttl))
    return Answer(dns.rcode.to_text(msg.rcode()), tuple(chain), tuple(addresses.items()))
