"""The star-wars demo's applications: the deathstar HTTP service and a ship's
one-shot HTTP client. Each runs as its own process inside a pod's network
namespace (`ip netns exec`), so they use only the standard library.

    python -m demo.apps server --port 80
    python -m demo.apps request METHOD URL [--timeout S]   # prints one JSON line
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ROUTES: dict[tuple[str, str], tuple[int, str]] = {
    ("GET", "/v1"): (200, "deathstar: {landing, exhaust-port}\n"),
    ("POST", "/v1/request-landing"): (200, "Ship landed\n"),
    ("PUT", "/v1/exhaust-port"): (200, "Panic: deathstar exploded\n"),
}


class _Deathstar(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "deathstar/1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, body = ROUTES.get((self.command, self.path), (404, "not found\n"))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        # One line per request on stdout: the demo and tests read it to prove
        # which requests reached the server at all.
        client = self.client_address[0]
        if client.startswith("::ffff:") and "." in client:  # an IPv4 client of the dual-stack socket
            client = client[len("::ffff:"):]
        print(json.dumps({"method": self.command, "path": self.path, "client": client, "port": self.client_address[1]}), flush=True)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


class _DualStackServer(ThreadingHTTPServer):
    """[::] with IPV6_V6ONLY off: one socket for both families."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(host: str, port: int) -> None:
    """host "": both families where the pod has IPv6, else IPv4."""
    server: ThreadingHTTPServer
    if host == "":
        try:
            server, host = _DualStackServer(("::", port), _Deathstar), "[::]"
        except OSError:  # no IPv6 in this pod
            server, host = ThreadingHTTPServer(("0.0.0.0", port), _Deathstar), "0.0.0.0"
    else:
        server = ThreadingHTTPServer((host, port), _Deathstar)
    server.daemon_threads = True
    print(json.dumps({"listening": f"{host}:{port}"}), flush=True)
    server.serve_forever()


def request(method: str, url: str, timeout: float) -> dict[str, object]:
    """One request; the outcome a person would see: a status or a timeout."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        conn.request(method, parts.path or "/", body=b"" if method in ("POST", "PUT") else None)
        resp = conn.getresponse()
        return {"status": resp.status, "body": resp.read().decode(errors="replace").strip()}
    except (socket.timeout, TimeoutError):
        return {"error": "timeout"}
    except OSError as exc:
        return {"error": type(exc).__name__, "detail": str(exc)}
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.apps")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--host", default="", help="default: both families where the pod has IPv6")
    s.add_argument("--port", type=int, default=80)
    r = sub.add_parser("request")
    r.add_argument("method")
    r.add_argument("url")
    r.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.cmd == "server":
        serve(args.host, args.port)
        return 0
    print(json.dumps(request(args.method, args.url, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
