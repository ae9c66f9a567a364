"""One HTTP GET over a unix socket with the standard library: for callers
that poll a local API often (the demo's node helpers the agent's, the compose
attach loop Docker's) and must not pay for an HTTP client library or an
interpreter per request. Here, the lowest layer both may import, beside the
other local-socket clients (Envoy's admin). Does socket I/O."""

from __future__ import annotations

import http.client
import socket


def unix_get(socket_path: str, path: str, timeout: float, host: str = "localhost") -> tuple[int, bytes]:
    """(HTTP status, body). Raises OSError when nothing answers."""
    conn = http.client.HTTPConnection(host, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
    except OSError:
        sock.close()
        raise
    conn.sock = sock
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
