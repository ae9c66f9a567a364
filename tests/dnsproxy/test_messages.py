"""Reading pods' queries and resolvers' answers (dnsproxy/messages.py): what
a hostile pod or resolver can send, and what the proxy makes of it."""

from __future__ import annotations

import struct
from ipaddress import ip_address

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsproxy.messages import (
    MAX_ADDRESSES,
    MAX_CHAIN,
    MessageError,
    Reject,
    header_only,
    parse_query,
    parse_response,
    query_id,
    refusal,
)


def query(name: str = "Allowed.Test.", qtype: str = "A") -> bytes:
    return dns.message.make_query(name, qtype, id=4242).to_wire()


def response(q: bytes, *records: tuple[str, str, int, str], rcode: int = dns.rcode.NOERROR) -> bytes:
    """records: (owner, type, ttl, data)."""
    resp = dns.message.make_response(dns.message.from_wire(q))
    resp.set_rcode(rcode)
    for owner, rtype, ttl, data in records:
        resp.answer.append(dns.rrset.from_text(owner, ttl, "IN", rtype, data))
    return resp.to_wire()


def test_a_query_is_read_in_canonical_form():
    q = parse_query(query("Allowed.TEST"))
    assert (q.id, q.name, q.qtype) == (4242, "allowed.test.", "A")


@pytest.mark.parametrize("wire, why", [
    (b"", "malformed"),
    (b"\x12\x34" + b"\x00" * 5, "malformed"),  # shorter than a header
    (query()[:-3], "malformed"),  # question cut short
    (bytes(response(query())), "a response where a query was expected"),
])
def test_broken_or_wrong_queries_are_refused_with_a_reason(wire, why):
    with pytest.raises(MessageError, match=why):
        parse_query(wire)


def test_a_compression_loop_is_refused_not_followed():
    # Header, then a question whose name is a pointer to itself (offset 12).
    wire = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    with pytest.raises(MessageError, match="malformed"):
        parse_query(wire)


def test_two_questions_and_other_opcodes_are_refused():
    m = dns.message.make_query("a.test", "A")
    m.question.append(dns.message.make_query("b.test", "A").question[0])
    with pytest.raises(MessageError, match="2 questions"):
        parse_query(m.to_wire())
    m = dns.message.make_query("a.test", "A")
    m.set_opcode(dns.opcode.NOTIFY)
    with pytest.raises(MessageError, match="opcode NOTIFY"):
        parse_query(m.to_wire())


def test_an_oversized_label_or_name_is_refused():
    label = b"\x40" + b"a" * 64  # 64 octets: one over a label's limit
    wire = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + label + b"\x00" + struct.pack("!HH", 1, 1)
    with pytest.raises(MessageError):
        parse_query(wire)


@pytest.mark.parametrize("reject, rcode", [(Reject.REFUSED, dns.rcode.REFUSED), (Reject.NAME_ERROR, dns.rcode.NXDOMAIN)])
def test_a_denied_query_is_answered_with_its_id_question_and_the_chosen_rcode(reject, rcode):
    q = parse_query(query("other.test"))
    resp = dns.message.from_wire(refusal(q, reject))
    assert resp.id == 4242 and resp.rcode() == rcode and resp.flags & dns.flags.QR
    assert [str(x.name) for x in resp.question] == ["other.test."] and not resp.answer


def test_an_unparsable_query_gets_formerr_when_its_id_is_readable():
    assert query_id(b"\x01\x02" + b"\x00" * 10) == 0x0102 and query_id(b"\x01") is None
    resp = dns.message.from_wire(header_only(0x0102))
    assert resp.id == 0x0102 and resp.rcode() == dns.rcode.FORMERR


def test_addresses_of_the_name_and_its_cname_chain_with_ttls():
    q = query("api.test")
    wire = response(q, ("api.test.", "CNAME", 300, "edge.cdn.test."), ("edge.cdn.test.", "A", 30, "192.0.2.10"),
                    ("edge.cdn.test.", "AAAA", 60, "2001:db8::10"))
    a = parse_response(wire, parse_query(q))
    assert a.rcode == "NOERROR" and a.names == ("api.test.", "edge.cdn.test.")
    assert a.addresses == ((ip_address("192.0.2.10"), 30), (ip_address("2001:db8::10"), 60))


def test_records_for_names_nobody_asked_about_are_ignored():
    """A resolver (or a pod answering itself) slipping in an address for
    another name, or a CNAME owned by another name, teaches nothing."""
    q = query("allowed.test")
    wire = response(q, ("allowed.test.", "A", 60, "192.0.2.1"), ("evil.test.", "A", 60, "10.0.0.5"),
                    ("other.test.", "CNAME", 60, "allowed.test."))
    a = parse_response(wire, parse_query(q))
    assert a.names == ("allowed.test.",) and a.addresses == ((ip_address("192.0.2.1"), 60),)


def test_a_response_to_another_query_is_refused():
    q = parse_query(query("allowed.test"))
    other = dns.message.make_query("allowed.test", "A", id=1)
    with pytest.raises(MessageError, match="id does not match"):
        parse_response(response(other.to_wire(), ("allowed.test.", "A", 60, "192.0.2.1")), q)
    with pytest.raises(MessageError, match="question does not match"):
        parse_response(response(query("evil.test"), ("evil.test.", "A", 60, "192.0.2.1")), q)
    with pytest.raises(MessageError, match="a query where a response"):
        parse_response(query("allowed.test"), q)


def test_cname_loops_and_long_chains_stop():
    q = query("a.test")
    loop = response(q, ("a.test.", "CNAME", 60, "b.test."), ("b.test.", "CNAME", 60, "a.test."), ("b.test.", "A", 60, "192.0.2.2"))
    a = parse_response(loop, parse_query(q))
    assert a.names == ("a.test.", "b.test.") and a.addresses == ((ip_address("192.0.2.2"), 60),)
    links = [(f"n{i}.test.", "CNAME", 60, f"n{i + 1}.test.") for i in range(40)]
    q = query("n0.test")
    a = parse_response(response(q, *links, ("n40.test.", "A", 60, "192.0.2.3")), parse_query(q))
    assert len(a.names) == MAX_CHAIN + 1 and a.addresses == ()


def test_many_answers_are_capped():
    q = query("many.test")
    data = [("many.test.", "A", 60, str(ip_address("198.18.0.0") + i)) for i in range(MAX_ADDRESSES + 50)]
    resp = dns.message.make_response(dns.message.from_wire(q))
    rrset = dns.rrset.from_text_list("many.test.", 60, "IN", "A", [d[3] for d in data])
    resp.answer.append(rrset)
    a = parse_response(resp.to_wire(max_size=1 << 20), parse_query(q))
    assert len(a.addresses) == MAX_ADDRESSES


def test_the_shortest_ttl_of_an_address_wins():
    q = query("a.test")
    wire = response(q, ("a.test.", "CNAME", 300, "b.test."), ("a.test.", "A", 300, "192.0.2.9"), ("b.test.", "A", 5, "192.0.2.9"))
    assert parse_response(wire, parse_query(q)).addresses == ((ip_address("192.0.2.9"), 5),)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_reader(blob):
    q = parse_query(query("x.test"))
    for fn in (lambda: parse_query(blob), lambda: parse_response(blob, q)):
        try:
            fn()
        except MessageError:
            pass
