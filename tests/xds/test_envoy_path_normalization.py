"""policy/http_path.py states Envoy's path normalization; the real Envoy, as
configured by xds/listener.py and xds/routes.py, must agree on every path of a
generated corpus: the upstream receives exactly normalize_path(sent), Envoy
answers 400 exactly where normalize_path refuses, and `trace` gives the
verdict Envoy gives under a path rule. Raw requests (nothing between us and
Envoy rewrites the path), over HTTP/1.1 and HTTP/2 (h2c prior knowledge),
through an ingress and an egress listener. One Envoy for the module."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
import pytest_asyncio

from policy.compiled import HTTPRule
from policy.http_path import normalize_path
from policy.trace import HTTPRequest, Party, trace
from tests.xds.conftest import free_port, running_rig
from tests.xds.fixtures import EGRESS_EP, INGRESS_EP, both_directions
from tests.xds.raw_http import PROTOCOLS

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

RULE_PORT, ANY_PATH_PORT = 80, 81  # destination ports: a `GET /public/.*` rule, and `GET` on any path
ENVOY_ROUTES = {RULE_PORT: HTTPRule(method="GET", path="/public/.*"), ANY_PATH_PORT: HTTPRule(method="GET")}
DIRECTIONS = {
    "ingress": (Party.address("127.0.0.1"), Party.endpoint(INGRESS_EP)),
    "egress": (Party.endpoint(EGRESS_EP), Party.address("127.0.0.1")),
}

# Reported and hand-picked paths, always in the corpus.
FIXED = [
    "/public/x", "/public/../private", "/public/%2e%2e/private", "/public/%2E%2E/private", "/public/.%2e/private",
    "/public/..%2fprivate", "/public/..%2Fprivate", "/public/..%5cprivate", "/public//../private", "/public/./../private",
    "/public/..\\private", "/public/a\\b", "//public///x", "/public/x/..", "/public/x/.", "/..", "/public/x/%2e",
    "/public/x/%2E%2e/", "/public/a/b/../../..", "/public/a%41b", "/public/%7euser", "/public/a%2Eb", "/public/a%2db",
    "/public/a%20b", "/public/a%2a%2A", "/public/a%3Fb", "/public/%252e%252e/x", "/public/%zz", "/public/a%2x", "/public/a%",
    "/public/a|b", "/public/a{b}", '/public/a"b', "/public/a<b>", "/public/a^b", "/public/a`b", "/public/.../x",
    "/public/a?x=/../y", "/public/a%00b", "/public/x/..;/y", "/public/..;/private", "/public/x/.;/y", "/public/x;/../y",
    # Dot segments with parameters (Tomcat, Jetty and Spring read `..;x` as `..`).
    "/public/%2e%2e;/private", "/public/%2e%2e;x/private", "/public/.%2e;x/private", "/public/%2e.;x/private",
    "/public/%2E%2E;a=b/admin", "/public/..;x/private", "/public\\..;\\private", "/public/x?q=/%2e%2e;/y",
    "/public/%%41b", "/public/%%300", "/public/%3%41", "/a/%zz/../%41", "/", "//", "///", "/\\", "/public/x#f", "/public/x?q=#",
    # Raw non-ASCII: HTTP/1.1's parser refuses it, over HTTP/2 Envoy percent-encodes it.
    "/public/é", "/public/%C3%A9é/../x",
]

_DOTS = (".", "..", "...", "%2e", "%2E%2E", ".%2e", "%2e.", "%2e%2E", ".%2E")
_PARAMS = ("", ";", ";x", ";a=b", "%3b", "%3Bx", ";/")
_AFTER = ("/", "\\", "%2f", "%5C", "//", "")
_ATOMS = (
    ".", "%2e", "%2E", "..", ";", ";p", ";a=b", "/", "//", "\\", "%2f", "%5c", "%41", "%7e", "%7E", "%20", "%25", "%zz",
    "%", "%%", "%2", "%3", "%3b", "%3B", "a", "x.y", "%252e", "%u002e", "%c0%ae", "~", "?q=/..;x", "%3f", "%00", "0", "b",
    "f", "%61", "|", "{", '"', "<", "^", "`", "-", "_", "*", "[", "@", ":", "=", "+", "$", ",", "!", "'", "(", "&",
)


def corpus() -> list[str]:
    """FIXED, every dot spelling x parameters x what follows, in two segment
    positions (after a slash, after a backslash), and seeded random strings of
    escapes, dots, separators and punctuation. Deterministic."""
    paths = list(FIXED)
    for pre, dots, params, after, tail in itertools.product(("/public/", "/public/a\\"), _DOTS, _PARAMS, _AFTER, ("private", "")):
        paths.append(pre + dots + params + after + tail)
    rnd = random.Random(20260901)
    paths += ["/" + "".join(rnd.choice(_ATOMS) for _ in range(rnd.randint(1, 9))) for _ in range(400)]
    return list(dict.fromkeys(paths))


def _refused_by_transport(protocol: str, path: str) -> bool:
    # HTTP/1.1's parser answers 400 to raw non-ASCII in the request target
    # before Envoy normalizes anything; normalize_path states the HTTP/2 case.
    return protocol == "http1" and not path.isascii()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig():
    """One Envoy with an ingress and an egress listener per destination
    port of ENVOY_ROUTES, and the CompiledState trace() reads them from."""
    ports = {dport: (free_port(), free_port(), http) for dport, http in ENVOY_ROUTES.items()}
    st = both_directions(ports)
    async with running_rig() as r:
        await r.publish(st)
        await r.envoy.wait_ready()
        yield r, st, {d: {"ingress": p[0], "egress": p[1]} for d, p in ports.items()}


async def test_envoy_forwards_exactly_the_normalized_path_and_trace_agrees_on_a_generated_corpus(rig):
    r, st, ports = rig
    paths = corpus()
    assert len(paths) > 1500
    gate = asyncio.Semaphore(32)

    async def envoy_says(protocol: str, port: int, path: str) -> tuple[int, str | None]:
        async with gate:
            status, body = await PROTOCOLS[protocol](port, path, r.upstream_header.items())
        return status, body.removeprefix("upstream GET ") if status == 200 else None

    def expected(protocol: str, direction: str, dport: int, path: str) -> tuple[int, str | None]:
        if _refused_by_transport(protocol, path):
            return 400, None
        src, dst = DIRECTIONS[direction]
        verdict = trace(st, src, dst, dport, http=HTTPRequest(path=path))
        if not verdict.allowed:
            return verdict.proxy_status or 0, None
        return 200, normalize_path(path)

    cases = [(p, d, port, path) for p in PROTOCOLS for d in DIRECTIONS for port in ENVOY_ROUTES for path in paths]
    got = await asyncio.gather(*(envoy_says(p, ports[port][d], path) for p, d, port, path in cases))
    disagree = [
        f"{p} {d} {'rule' if port == RULE_PORT else 'any path'} {path!r}: envoy {g}, trace/normalize_path {want}"
        for (p, d, port, path), g in zip(cases, got)
        if g != (want := expected(p, d, port, path))
    ]
    assert not disagree, f"{len(disagree)} of {len(cases)} disagree:\n" + "\n".join(disagree[:40])


# A `GET /public/.*` rule must not let these reach anything but /public.
ESCAPES_PUBLIC = [
    ("/public/%2e%2e;/private", 400),
    ("/public/%2e%2e;x/private", 400),
    ("/public/.%2e;x/private", 400),
    ("/public/%2e.;x/private", 400),
    ("/public/%2E%2E;a=b/admin", 400),
    ("/public\\..;\\private", 400),  # literal dots after a backslash: Envoy leaves them too
    ("/public/..;x/private", 403),  # literal dots: Envoy resolves them to /private
    ("/public/../private", 403),
    ("/public/..%2fprivate", 400),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_dot_segments_with_parameters_never_pass_a_path_rule(rig, protocol, direction):
    r, st, ports = rig
    before = len(r.upstream_seen)
    got = {}
    for path, _ in ESCAPES_PUBLIC:
        status, _ = await PROTOCOLS[protocol](ports[RULE_PORT][direction], path, r.upstream_header.items())
        src, dst = DIRECTIONS[direction]
        traced = trace(st, src, dst, RULE_PORT, http=HTTPRequest(path=path))
        got[path] = (status, traced.proxy_status)
    assert got == {path: (want, want) for path, want in ESCAPES_PUBLIC}
    assert r.upstream_seen[before:] == [], "nothing reached the upstream"
