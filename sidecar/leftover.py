"""An Envoy left running by a killed agent: find it, then drain and retire it
once its successor serves. Does /proc, admin-socket and signal I/O.

Envoy runs in its own session, so it outlives an agent killed with -9 and
keeps serving L7 meanwhile. The next agent finds it by its bootstrap path in
/proc (`envoys_using`, the one scan for Envoy processes), starts its own
Envoy (both share the listener ports through SO_REUSEPORT during the
overlap), and when the new one is ready calls `retire`: a graceful drain
through the old one's admin socket (read from its bootstrap file before the
new bootstrap replaces it, `sidecar.bootstrap.read_admin_socket`), so
requests in flight finish, then SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import httpx

from sidecar.supervisor import DRAIN_TIME_S, admin_client

DRAIN_SECONDS = DRAIN_TIME_S + 0.5  # Envoy's own drain (the supervisor's flag), and a margin on top
log = logging.getLogger(__name__)


def envoys_using(bootstrap: Path, proc: Path = Path("/proc")) -> list[int]:
    """Pids of Envoy processes started with this bootstrap file."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"envoy" in Path(argv[0].decode(errors="replace")).name.encode() and str(bootstrap).encode() in argv:
            found.append(int(entry.name))
    return sorted(found)


async def drain(admin: str) -> None:
    """Gracefully drain an Envoy's listeners (it tells HTTP clients to close,
    then stops accepting) through its admin socket and give it the drain
    time; best effort."""
    try:
        async with admin_client(admin, timeout=2.0) as client:
            resp = await client.post("/drain_listeners", params={"graceful": ""})
        if resp.status_code != 200:
            log.warning("draining the previous Envoy at %s: HTTP %d %s", admin, resp.status_code, resp.text[:200])
            return
    except httpx.HTTPError as exc:
        log.warning("draining the previous Envoy at %s failed: %s", admin, exc)
        return
    await asyncio.sleep(DRAIN_SECONDS)


async def retire(pids: list[int], old_admin: str | None, workdir: Path) -> None:
    """Drain (when its admin socket is known) and stop the leftover Envoys;
    remove the old admin socket file, which Envoy leaves behind."""
    if old_admin is not None:
        await drain(old_admin)
    else:
        log.info("the previous Envoy has no admin socket on record; retiring it without a drain")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            log.info("retired Envoy pid %d left by a previous agent", pid)
        except ProcessLookupError:
            pass
    if old_admin is not None and Path(old_admin).parent == workdir:
        Path(old_admin).unlink(missing_ok=True)
