"""Whether Envoy still serves the listeners it acknowledged. Does admin-socket
and /proc I/O.

Envoy's own counters do not tell: after `POST /drain_listeners` its
`/listeners` still lists every listener and `total_listeners_active` is
unchanged, yet the listening sockets are closed and redirected connections
are refused. So a listener counts as served only when Envoy lists it *and*
the Envoy process holds a socket in LISTEN state on the address Envoy gives
for it (read from /proc/<pid>/fd and /proc/<pid>/net/tcp{,6}).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

TCP_LISTEN = "0A"  # st column of /proc/net/tcp


@dataclass(frozen=True, slots=True)
class ListenerFault:
    name: str
    reason: str  # "missing" (Envoy has no such listener) or "not listening" (stopped, drained)

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


async def envoy_listeners(client: httpx.AsyncClient) -> dict[str, tuple[str, int] | None]:
    """Listener name -> (address, port) as Envoy's admin `/listeners` reports
    them (None for a listener on something other than an IP socket)."""
    resp = await client.get("/listeners", params={"format": "json"})
    resp.raise_for_status()
    out: dict[str, tuple[str, int] | None] = {}
    for ls in resp.json().get("listener_statuses", []):
        sa = (ls.get("local_address") or {}).get("socket_address") or {}
        addr = sa.get("address")
        out[ls["name"]] = (addr, int(sa.get("port_value", 0))) if addr else None
    return out


def _socket_inodes(pid: int, proc: Path) -> set[str]:
    inodes = set()
    fd_dir = proc / str(pid) / "fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _hex_address(text: str) -> tuple[str, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints the address as 32-bit words in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words)), int(port, 16)


def listening_sockets(pid: int, proc: Path = Path("/proc")) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by `pid`."""
    mine = _socket_inodes(pid, proc)
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == TCP_LISTEN and cols[9] in mine:
                found.add(_hex_address(cols[1]))
    return found


def _served(addr: tuple[str, int], listening: set[tuple[str, int]]) -> bool:
    host, port = addr
    want = ipaddress.ip_address(host)
    for h, p in listening:
        got = ipaddress.ip_address(h)
        if p == port and (got == want or got.is_unspecified):
            return True
    return False


async def listener_faults(expected: Iterable[str], client: httpx.AsyncClient, pid: int) -> list[ListenerFault]:
    """The expected listeners that Envoy (process `pid`, admin API behind
    `client`) does not serve, sorted by name; empty when all are served."""
    have = await envoy_listeners(client)
    listening = await asyncio.to_thread(listening_sockets, pid)  # /proc tables can be long
    faults = []
    for name in sorted(expected):
        if name not in have:
            faults.append(ListenerFault(name, "missing"))
        elif (addr := have[name]) is not None and not _served(addr, listening):
            faults.append(ListenerFault(name, "not listening"))
    return faults
