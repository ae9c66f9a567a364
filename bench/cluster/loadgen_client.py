"""Node B's side of the load generator's pipe: starts the "loadgen" child
and sends it one JSON-line command at a time."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

from bench.cluster.spawn import ENTRY, die_with_parent


class LoadGenClient:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._lock = asyncio.Lock()  # one request on the pipe at a time

    @classmethod
    async def start(cls, a: argparse.Namespace, url: str) -> LoadGenClient:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ENTRY), "--role", "loadgen", "--etcd", url, "--nodes-one", str(a.nodes_one),
            "--pods", str(a.pods), "--pods-per-identity", str(a.pods_per_identity), "--adds", str(a.adds),
            "--seed", str(a.seed),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent, limit=1 << 20,
        )
        return cls(proc)

    async def ask(self, **cmd: object) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({await self.proc.wait()}) on {cmd['cmd']}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"load generator: {cmd['cmd']}: {reply['error']}")
        return reply

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ask(cmd="quit")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
