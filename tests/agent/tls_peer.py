"""A TLS server and client for end-to-end tests, run inside pod network
namespaces (`python -m tests.agent.tls_peer server|client ...`).

The server prints one JSON line per event: `listening`, every TCP connection
it accepts (before any handshake: a connection the proxy refused never
shows up), and each completed handshake with the server name the client
sent. It echoes what it reads. The client prints one JSON line: what it got
back, or why it failed."""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import threading


def _say(**kv: object) -> None:
    print(json.dumps(kv), flush=True)


def serve(port: int, cert: str, key: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    # The callback runs in the handshaking thread, inside wrap_socket.
    seen = threading.local()

    def remember(_sock: object, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen.name = name

    ctx.sni_callback = remember  # type: ignore[assignment]
    lst = socket.create_server(("0.0.0.0", port), reuse_port=True)
    _say(event="listening", port=port)

    def handle(conn: socket.socket, peer: tuple) -> None:
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                _say(event="handshake", client=peer[0], server_name=getattr(seen, "name", None))
                data = tls.recv(100)
                tls.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            _say(event="failed", client=peer[0], error=type(exc).__name__)

    while True:
        conn, peer = lst.accept()
        _say(event="accepted", client=peer[0])
        threading.Thread(target=handle, args=(conn, peer), daemon=True).start()


def request(host: str, port: int, server_name: str, cafile: str, timeout: float) -> None:
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(b"ping")
                _say(result="ok", echo=tls.recv(100).decode())
    except TimeoutError:
        _say(result="timeout")
    except (OSError, ssl.SSLError) as exc:
        _say(result="refused", error=f"{type(exc).__name__}: {exc}")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    c = sub.add_parser("client")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--server-name", required=True)
    c.add_argument("--cafile", required=True)
    c.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    if args.cmd == "server":
        serve(args.port, args.cert, args.key)
    else:
        request(args.host, args.port, args.server_name, args.cafile, args.timeout)


if __name__ == "__main__":
    main(sys.argv[1:])
