"""What etcd holds after the population: keys per prefix and database size,
asked through etcd's JSON gateway so the measuring adds no client of its own
to the process under test."""

from __future__ import annotations

import base64
import json
import urllib.request


def gateway(url: str, path: str, body: dict | None) -> dict:
    """etcd's JSON gateway (GET when body is None), never through an HTTP proxy."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as r:
        return json.load(r)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def count_keys(url: str, prefix: str) -> int:
    p = prefix.encode()
    end = p[:-1] + bytes([p[-1] + 1])
    return int(gateway(url, "/v3/kv/range", {"key": _b64(p), "range_end": _b64(end), "count_only": True}).get("count", 0))


def db_size(url: str) -> int:
    return int(gateway(url, "/v3/maintenance/status", {}).get("dbSize", 0))
