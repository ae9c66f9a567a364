"""A throw-away single-member etcd: the one launcher behind the cluster demo
(demo/cluster.py), the kvstore tests (tests/kvstore/etcd_server.py) and the
cluster benchmark (bench/bench_cluster.py). Does I/O: a process, a
directory, a unix socket.

- It listens on 127.0.0.1 unless given an address (the cluster demo gives
  its underlay address and runs it inside the underlay's network
  namespace), on free ports unless given ports.
- Data, log and readiness socket live in a directory of its own; close()
  kills etcd and removes the directory; stop()/start() and restart() keep
  the data and the ports.
- etcd dies with the thread that started it (setpriv --pdeathsig KILL), so
  a killed or timed-out parent leaves no etcd behind.
- start() returns when etcd says it is ready and fails as soon as it exits,
  both events waited on together (sd_notify's READY=1 on a unix socket,
  sent once etcd has joined its cluster of one and serves clients; a pidfd
  for the exit): no polling, no sleep.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ETCD = Path("/usr/bin/etcd")
LOOPBACK = "127.0.0.1"


class EtcdStartError(RuntimeError):
    """etcd is missing, exited, or did not say it was ready in time; the
    message carries the reason or the tail of its log."""


def etcd_missing_reason() -> str | None:
    if not (ETCD.is_file() and os.access(ETCD, os.X_OK)):
        return f"etcd: {ETCD} is missing (apt-get install etcd-server; make install does)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class EtcdProcess:
    def __init__(
        self,
        parent_dir: Path | None = None,
        *,
        name: str = "ciliate",
        address: str = LOOPBACK,
        client_port: int | None = None,
        peer_port: int | None = None,
        netns: Path | None = None,
        https: bool = False,
        fast: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        """`address`: where clients reach it (it also listens on loopback, so
        etcdctl's default endpoint works where it runs); `netns`: run inside
        that network namespace (nsenter, root); `https`: the scheme of its
        client URL (`extra_args` bring the certificates); `fast`: 10 ms
        heartbeat and 100 ms election, so it is up in about 0.1 s and 1 s
        lease TTLs hold."""
        self.dir = Path(tempfile.mkdtemp(prefix="etcd-", dir=parent_dir))
        self.data_dir = self.dir / "data"
        self.log_file = self.dir / "etcd.log"
        self.name = name
        self.address = address
        self.netns = netns
        self.https = https
        self.fast = fast
        self.extra_args = tuple(extra_args)
        # Ports we picked may be taken before etcd binds them; given ones are the caller's.
        self._own_ports = client_port is None and peer_port is None
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.proc: subprocess.Popen | None = None
        self._started_once = False

    @property
    def client_url(self) -> str:
        return f"{'https' if self.https else 'http'}://{self.address}:{self.client_port}"

    def args(self) -> list[str]:
        scheme = "https" if self.https else "http"
        listen = [self.client_url]
        if self.address != LOOPBACK:
            listen.append(f"{scheme}://{LOOPBACK}:{self.client_port}")
        peer = f"http://{LOOPBACK}:{self.peer_port}"  # a cluster of one: nobody else dials it
        # The parent death signal follows the thread that called start(),
        # so call it from one that lives on.
        guard = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        netns = ["nsenter", f"--net={self.netns}"] if self.netns is not None else []
        timing = ["--heartbeat-interval", "10", "--election-timeout", "100"] if self.fast else []
        return [
            *guard,
            *netns,
            str(ETCD),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", ",".join(listen),
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            *timing,
            "--auto-compaction-retention", "0",
            "--logger", "zap",
            "--log-outputs", str(self.log_file),
            *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> None:
        if (missing := etcd_missing_reason()) is not None:
            raise EtcdStartError(missing)
        for _ in range(3):
            if self._spawn(timeout):
                self._started_once = True
                return
            if self._started_once or not self._own_ports or "address already in use" not in self.log_tail():
                break
            # A port taken between free_port() and etcd's bind, before the
            # first start: new ports, new data.
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.client_port, self.peer_port = free_port(), free_port()
        raise EtcdStartError(f"etcd did not become ready; log tail:\n{self.log_tail()}")

    def _spawn(self, timeout: float) -> bool:
        assert self.proc is None, "already running"
        notify = self.dir / "notify"
        notify.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ready:
            # A path, not an abstract name: those do not cross network namespaces.
            ready.bind(str(notify))
            try:
                with open(self.log_file, "ab") as log:  # early failures (bad flags) go to stderr
                    self.proc = subprocess.Popen(
                        self.args(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                        env={**os.environ, "NOTIFY_SOCKET": str(notify)}, start_new_session=True,
                    )
                if self._wait_ready(ready, timeout):
                    return True
            finally:
                notify.unlink(missing_ok=True)
        self.kill()
        return False

    def _wait_ready(self, ready: socket.socket, timeout: float) -> bool:
        assert self.proc is not None
        exited = os.pidfd_open(self.proc.pid)
        try:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([ready, exited], [], [], left)
                if ready in readable and b"READY=1" in ready.recv(4096).split(b"\n"):
                    return True
                if exited in readable:
                    self.proc.wait()
                    self.proc = None
                    return False
            return False
        finally:
            os.close(exited)

    def stop(self) -> None:
        """SIGTERM (etcd shuts down cleanly, data kept), SIGKILL after 5 s."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdProcess:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"
