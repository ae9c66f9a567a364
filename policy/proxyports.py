"""Proxy ports: one per redirect (endpoint, direction, port), stable.

A redirect keeps its port until released, so Envoy's listener does not move
while the policy that made it stays; the agent persists the allocator with
to_json()/from_json() so ports survive a restart. The compiler frees ports
saved by an earlier run that no redirect needs any more (Compiler.compile).
The range is part of the compiled contract (policy.compiled). Pure, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from policy.compiled import DNS_PROXY_PORT, PROXY_PORT_MAX, PROXY_PORT_MIN, Direction, RedirectKey


class ProxyPortsExhausted(Exception):
    """Every port in PROXY_PORT_MIN..PROXY_PORT_MAX is in use."""


class ProxyPortAllocator:
    """RedirectKey -> proxy port; a key keeps its port until released."""

    def __init__(self, lo: int = PROXY_PORT_MIN, hi: int = PROXY_PORT_MAX, dns_port: int = DNS_PROXY_PORT) -> None:
        self.lo, self.hi = lo, hi
        # Every DNS redirect's port: the agent's one DNS proxy (not allocated).
        self.dns_port = dns_port
        self._ports: dict[RedirectKey, int] = {}
        self._used: set[int] = set()
        self._cursor = lo
        self.generation = 0  # bumped by every change of what to_json() writes

    def allocate(self, key: RedirectKey) -> int:
        port = self._ports.get(key)
        if port is not None:
            return port
        size = self.hi - self.lo + 1
        if len(self._used) >= size:
            raise ProxyPortsExhausted(f"all {size} proxy ports are in use")
        # Round-robin from the last allocation so a just-released port is not
        # reused at once by an unrelated redirect (Envoy may still hold it).
        while self._cursor in self._used:
            self._cursor = self.lo if self._cursor >= self.hi else self._cursor + 1
        port = self._cursor
        self._cursor = self.lo if self._cursor >= self.hi else self._cursor + 1
        self._ports[key] = port
        self._used.add(port)
        self.generation += 1
        return port

    def port_of(self, key: RedirectKey) -> int | None:
        return self._ports.get(key)

    def release(self, key: RedirectKey) -> None:
        port = self._ports.pop(key, None)
        if port is not None:
            self._used.discard(port)
            self.generation += 1

    def retain(self, keys: Iterable[RedirectKey]) -> None:
        """Release every key not in `keys`."""
        keep = keys if isinstance(keys, (set, frozenset)) else set(keys)
        for key in [k for k in self._ports if k not in keep]:
            self.release(key)

    def items(self) -> dict[RedirectKey, int]:
        return dict(self._ports)

    def to_json(self) -> str:
        return json.dumps(
            {
                "ports": [[k.endpoint_id, int(k.direction), k.port, p] for k, p in sorted(self._ports.items())],
                "cursor": self._cursor,
            }
        )

    @classmethod
    def from_json(cls, s: str) -> "ProxyPortAllocator":
        data = json.loads(s)
        out = cls()
        for ep, direction, port, proxy in data.get("ports", []):
            key = RedirectKey(int(ep), Direction(int(direction)), int(port))
            out._ports[key] = int(proxy)
            out._used.add(int(proxy))
        cursor = int(data.get("cursor", PROXY_PORT_MIN))
        out._cursor = cursor if out.lo <= cursor <= out.hi else out.lo
        return out
