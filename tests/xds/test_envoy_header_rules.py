"""HTTP header rules on the real Envoy: a header named in a rule must satisfy
it on every line it is sent on, so the upstream never acts on a value the
rule did not admit; `trace` gives the same verdict. Raw requests over
HTTP/1.1 and HTTP/2, through an ingress and an egress listener, one Envoy for
the module."""

from __future__ import annotations

import pytest
import pytest_asyncio

from policy.compiled import HeaderMatch, HTTPRule
from policy.trace import HTTPRequest, trace
from tests.xds.conftest import free_port, running_rig
from tests.xds.fixtures import both_directions
from tests.xds.raw_http import PROTOCOLS
from tests.xds.test_envoy_path_normalization import DIRECTIONS

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

TOKEN, PRESENT, ODD = 80, 81, 82  # destination ports, one header rule each
ODD_VALUE = "a.b*c(d)[e]\\f|g?é"  # regex metacharacters and a non-ASCII letter, matched as written
RULES = {
    TOKEN: HTTPRule(headers=(HeaderMatch("x-token", "secret"),)),
    PRESENT: HTTPRule(headers=(HeaderMatch("x-debug"),)),
    ODD: HTTPRule(headers=(HeaderMatch("x-odd", ODD_VALUE),)),
}

CASES = [
    pytest.param(TOKEN, [("x-token", "secret")], 200, id="one-good-line"),
    pytest.param(TOKEN, [("x-token", "other"), ("x-token", "secret")], 403, id="bad-line-then-good"),
    pytest.param(TOKEN, [("x-token", "secret"), ("x-token", "other")], 403, id="good-line-then-bad"),
    pytest.param(TOKEN, [("x-token", "secret"), ("x-token", "secret")], 200, id="every-line-good"),
    pytest.param(TOKEN, [("x-token", "other, secret")], 403, id="comma-joined-bad"),
    pytest.param(TOKEN, [("x-token", "secret,secret")], 403, id="comma-joined-good-is-not-the-value"),
    pytest.param(TOKEN, [("X-Token", "secret"), ("x-token", "")], 403, id="empty-second-line-other-case"),
    pytest.param(TOKEN, [("x-token", "secre")], 403, id="prefix-of-the-value"),
    pytest.param(TOKEN, [("x-token", "secrets")], 403, id="value-and-more"),
    pytest.param(TOKEN, [], 403, id="missing"),
    pytest.param(PRESENT, [("x-debug", ""), ("x-debug", "1")], 200, id="presence-on-several-lines"),
    pytest.param(PRESENT, [], 403, id="presence-missing"),
    pytest.param(ODD, [("x-odd", ODD_VALUE)], 200, id="odd-value-as-written"),
    pytest.param(ODD, [("x-odd", ODD_VALUE), ("x-odd", "a.b*c(d)[e]\\f|g?e")], 403, id="odd-value-and-a-near-miss"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig():
    ports = {dport: (free_port(), free_port(), http) for dport, http in RULES.items()}
    st = both_directions(ports)
    async with running_rig() as r:
        await r.publish(st)
        await r.envoy.wait_ready()
        yield r, st, {d: {"ingress": p[0], "egress": p[1]} for d, p in ports.items()}


def _trace_status(st, direction: str, dport: int, lines: list[tuple[str, str]]) -> int:
    headers: dict[str, tuple[str, ...]] = {}
    for name, value in lines:
        headers[name] = (*headers.get(name, ()), value)
    src, dst = DIRECTIONS[direction]
    verdict = trace(st, src, dst, dport, http=HTTPRequest(headers=headers))
    return 200 if verdict.allowed else verdict.proxy_status or 0


@pytest.mark.parametrize("dport, lines, want", CASES)
async def test_a_header_rule_holds_on_every_line_and_trace_agrees(rig, dport, lines, want):
    r, st, ports = rig
    got = {}
    for protocol in PROTOCOLS:
        for direction in DIRECTIONS:
            before = len(r.upstream_seen)
            status, _ = await PROTOCOLS[protocol](ports[dport][direction], "/", [*r.upstream_header.items(), *lines])
            reached = [h for _, _, h in r.upstream_seen[before:]]
            got[protocol, direction] = (status, _trace_status(st, direction, dport, lines), len(reached))
            if status == 200:
                # The upstream got every line the rule judged, no more.
                names = {n.lower() for n, _ in lines}
                assert [(n.lower(), v) for n, v in reached[0] if n.lower() in names] == [(n.lower(), v) for n, v in lines]
    want_reached = 1 if want == 200 else 0
    assert got == {k: (want, want, want_reached) for k in got}
