"""serverNames enforced by the real Envoy on real TLS connections, which it
never decrypts: a client naming an allowed server completes its handshake
with the real server behind the listener (whose certificate it verifies) and
gets its bytes echoed; a disallowed name, a TLS client without SNI and a
plain connection are closed by Envoy, and the server proves it never even
accepted them.

Rendered with RenderParams.test_only_loopback() plus test_only_tcp_upstream
(an SNI listener has no HTTP header to carry the upstream; production uses
the accepted socket's local address, see xds/tls_listener.py). Everything
else (tls_inspector, the network RBAC, tcp_proxy) is what production renders.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from policy.compiled import (
    ANY_CONNECTION,
    CompiledState,
    Direction,
    EndpointPolicy,
    L7Kind,
    L7PeerRule,
    L7Policy,
    RedirectKey,
    SNIRule,
)
from tests.xds.conftest import free_port
from tests.xds.fixtures import CLIENT_IDENTITY, OTHER_IDENTITY, ipcache
from xds.render import PROXY_UPSTREAM_MARK, Renderer, RenderParams

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for the test certificate"),
]

# Generous hang guard: every wait below returns as soon as its event happens.
HANG = 15.0
NAMES = ("api.example.com", "*.example.org", "**.example.net")
CERT_NAMES = ("api.example.com", "evil.example.com", "x.example.org", "a.b.example.org", "a.b.example.net")


@dataclass
class TLSServer:
    """A TLS echo server recording every TCP connection it accepts (before
    any handshake) and every byte it reads after one."""

    ctx: ssl.SSLContext
    accepted: list[tuple[str, int]] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(writer.get_extra_info("peername"))
        try:
            await writer.start_tls(self.ctx)
            while data := await reader.read(4096):
                self.received.append(data)
                writer.write(data)
                await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.close()


def _certificate(workdir: Path) -> tuple[Path, Path]:
    key, cert = workdir / "key.pem", workdir / "cert.pem"
    san = ",".join(f"DNS:{n}" for n in CERT_NAMES)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=api.example.com", "-addext",
         f"subjectAltName={san}"],
        check=True, capture_output=True, timeout=60,
    )
    return key, cert


@pytest.fixture
async def tls_server(tmp_path):
    key, cert = _certificate(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    srv = TLSServer(ctx)
    srv.server = await asyncio.start_server(srv._handle, "127.0.0.1", 0)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        yield srv, client_ctx
    finally:
        srv.server.close()
        await srv.server.wait_closed()


def sni_state(proxy_port: int, rules: tuple[L7PeerRule, ...], direction: Direction = Direction.INGRESS,
              audit: bool = False) -> CompiledState:
    """Endpoint 1 with one SNI listener on port 443 (its proxy port `proxy_port`).
    On ingress the test client (127.0.0.1) is the peer; on egress the peer is
    the destination, which on loopback is the proxy's own 127.0.0.1."""
    pol = L7Policy(RedirectKey(1, direction, 443), proxy_port, rules, L7Kind.SNI)
    ep = EndpointPolicy(1, 2000, IPv4Address("10.0.0.1"), True, True, (), (pol,), audit=audit)
    return CompiledState(1, {1: ep}, ipcache())


def names(idents, *server_names: str) -> L7PeerRule:
    return L7PeerRule(frozenset(idents), None, (), SNIRule(server_names) if server_names else ANY_CONNECTION)


async def publish(rig, server: TLSServer, st: CompiledState) -> None:
    mark = PROXY_UPSTREAM_MARK if os.geteuid() == 0 else 0
    params = RenderParams.test_only_loopback(upstream_mark=mark, test_only_tcp_upstream=f"127.0.0.1:{server.port}")
    await rig.publish_snapshot(Renderer(params).render(st))
    await rig.envoy.wait_ready()


async def tls_echo(port: int, ctx: ssl.SSLContext, sni: str | None) -> bytes:
    """Handshake (verifying the real server's certificate for `sni`), send, read the echo."""
    if sni is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # a client that sends no SNI names no host either
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni or ""), HANG
    )
    try:
        writer.write(b"ping " + (sni or "-").encode())
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(b"ping " + (sni or "-").encode())), HANG)
    finally:
        writer.close()


async def refused_tls(port: int, ctx: ssl.SSLContext, sni: str | None) -> str:
    """The handshake or the first read fails because Envoy closed the connection."""
    try:
        got = await tls_echo(port, ctx, sni)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, EOFError) as e:
        return type(e).__name__
    raise AssertionError(f"SNI {sni!r}: expected the connection closed, got {got!r}")


async def plain(port: int, data: bytes = b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n") -> bytes:
    """A plain TCP connection: send, then read until the far end closes
    (returns what came back: b"" when closed without an answer)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), HANG)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        while len(out) < len(data):
            chunk = await asyncio.wait_for(reader.read(4096), HANG)
            if not chunk:
                break
            out += chunk
        return out
    except ConnectionError:
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize("direction", [Direction.INGRESS, Direction.EGRESS], ids=["ingress", "egress"])
async def test_allowed_names_reach_the_server_and_the_rest_never_does(envoy_rig, tls_server, direction):
    server, ctx = tls_server
    rig = await envoy_rig()
    port = free_port()
    await publish(rig, server, sni_state(port, (names([CLIENT_IDENTITY], *NAMES),), direction))

    # Denied first: each is closed by Envoy...
    for sni in ("evil.example.com", "a.b.example.org", "example.org", None):
        await refused_tls(port, ctx, sni)
    assert await plain(port) == b""
    # ...then the allowed ones go through, end to end (the certificate is the
    # real server's: nothing in between terminated TLS).
    for sni in ("api.example.com", "API.Example.COM", "x.example.org", "a.b.example.net"):
        assert await tls_echo(port, ctx, sni) == b"ping " + sni.encode()
    # The server saw exactly the allowed connections: the denied ones never
    # reached it, not even as a TCP handshake.
    assert len(server.accepted) == 4, server.accepted
    assert sorted(server.received) == sorted(b"ping " + s.encode() for s in ("api.example.com", "API.Example.COM", "x.example.org", "a.b.example.net"))


async def test_a_peer_without_rules_is_refused_whatever_the_name(envoy_rig, tls_server):
    server, ctx = tls_server
    rig = await envoy_rig()
    port = free_port()
    await publish(rig, server, sni_state(port, (names([OTHER_IDENTITY], "api.example.com"),)))
    await refused_tls(port, ctx, "api.example.com")
    # Barrier: the same listener, opened to the client, now lets it through.
    await publish(rig, server, sni_state(port, (names([CLIENT_IDENTITY], "api.example.com"),)))
    assert await tls_echo(port, ctx, "api.example.com") == b"ping api.example.com"
    assert len(server.accepted) == 1


async def test_l4_allowed_peer_passes_any_connection(envoy_rig, tls_server):
    """ANY_CONNECTION (what an L4 allow on the port gives): TLS without SNI
    and plain bytes pass too."""
    server, ctx = tls_server
    rig = await envoy_rig()
    port = free_port()
    await publish(rig, server, sni_state(port, (names([CLIENT_IDENTITY]),)))
    assert await tls_echo(port, ctx, None) == b"ping -"
    assert await tls_echo(port, ctx, "evil.example.com") == b"ping evil.example.com"
    assert len(server.accepted) == 2


async def test_audit_lets_disallowed_names_through(envoy_rig, tls_server):
    server, ctx = tls_server
    rig = await envoy_rig()
    port = free_port()
    st = sni_state(port, (names([CLIENT_IDENTITY], "api.example.com"),), audit=True)
    await publish(rig, server, st)
    assert await tls_echo(port, ctx, "evil.example.com") == b"ping evil.example.com"
    # Audit off: the same name is refused again.
    await publish(rig, server, replace(st, endpoints={1: replace(st.endpoints[1], audit=False)}))
    await refused_tls(port, ctx, "evil.example.com")
    assert await tls_echo(port, ctx, "api.example.com") == b"ping api.example.com"
    assert len(server.accepted) == 2
