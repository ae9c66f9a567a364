"""A real etcd for tests, and a TCP proxy to cut a client off from it.

`EtcdServer` runs /usr/bin/etcd (single member) on 127.0.0.1 with free
client and peer ports and a private data directory; `close()` (or the
context manager) always stops the process and removes the directory, and
etcd gets SIGKILL from the kernel if the test process dies first.
Election and heartbeat are fast (100 ms / 10 ms), so it starts in about
0.1 s and accepts 1 s lease TTLs; auto-compaction is off (compact() does
it on demand). Small sync helpers talk to etcd's JSON gateway (/v3/...),
so a test can look at or poke the store without the code under test.

`TcpProxy` forwards 127.0.0.1:port to the etcd client port; partition()
drops every connection and refuses new ones until heal(): a network
partition between one client and a living etcd (the lease then expires
for real).

Reusable by any test: `with EtcdServer() as etcd: ...`, or the `etcd`
fixture in tests/kvstore/conftest.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ETCD = Path("/usr/bin/etcd")


def etcd_missing_reason() -> str | None:
    if not (ETCD.is_file() and os.access(ETCD, os.X_OK)):
        return f"etcd: {ETCD} is missing (apt-get install etcd-server; scripts/install.sh does)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _prefix_end(prefix: str) -> bytes:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return bytes(b)


@dataclass(frozen=True)
class Pki:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client
    certificate, made with openssl (`make_pki`)."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_crt(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_crt(self) -> Path:
        return self.dir / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=ciliate-test-ca", "-days", "2")
    for name, ext in (
        # clientAuth too: etcd's JSON gateway dials etcd with the server certificate
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (directory / f"{name}.ext").write_text(ext + "\n")
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return Pki(directory)


@dataclass(frozen=True)
class KV:
    key: str
    value: str
    lease: int
    create_revision: int
    mod_revision: int


class EtcdServer:
    """`pki` set: clients must use https and present a certificate the
    test CA signed (--client-cert-auth)."""

    def __init__(self, parent_dir: Path | None = None, pki: Pki | None = None) -> None:
        self.pki = pki
        self.dir = Path(tempfile.mkdtemp(prefix="etcd-", dir=parent_dir))
        self.data_dir = self.dir / "data"
        self.log_file = self.dir / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen | None = None
        self._started_once = False

    @property
    def client_url(self) -> str:
        return f"{'https' if self.pki else 'http'}://127.0.0.1:{self.client_port}"

    # -- process -------------------------------------------------------------

    def _args(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        # If the test process dies without cleaning up (killed, timed out),
        # the kernel kills etcd too (the parent death signal follows the
        # thread that called start(), so call it from one that lives on).
        guard = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        return [
            *guard,
            str(ETCD),
            "--name", "test",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            "--auto-compaction-retention", "0",
            "--logger", "zap",
            "--log-outputs", str(self.log_file),
            *self.extra_args(),
        ]

    def extra_args(self) -> list[str]:
        if self.pki is None:
            return []
        p = self.pki
        return [
            "--cert-file", str(p.server_crt), "--key-file", str(p.server_key),
            "--client-cert-auth", "--trusted-ca-file", str(p.ca_crt),
        ]

    def start(self, timeout: float = 10.0) -> None:
        for _ in range(3):
            if self._spawn(timeout):
                self._started_once = True
                return
            if self._started_once or "address already in use" not in self.log_tail():
                break
            # A port taken between free_port() and etcd's bind, before the
            # first start: new ports, new data.
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.client_port, self.peer_port = free_port(), free_port()
        raise RuntimeError(f"etcd did not become healthy; log tail:\n{self.log_tail()}")

    def _spawn(self, timeout: float) -> bool:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            self._args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self.healthy():
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def healthy(self) -> bool:
        try:
            with self._open(urllib.request.Request(f"{self.client_url}/health"), timeout=1) as r:
                return json.load(r).get("health") == "true"
        except (OSError, ValueError):
            return False

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

    def __enter__(self) -> EtcdServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        return "(no log)"

    # -- the JSON gateway ----------------------------------------------------

    def _open(self, request: urllib.request.Request, timeout: float):
        # Never through an HTTP proxy from the environment.
        handlers: list = [urllib.request.ProxyHandler({})]
        if self.pki is not None:
            ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
            ctx.load_cert_chain(str(self.pki.client_crt), str(self.pki.client_key))
            handlers.append(urllib.request.HTTPSHandler(context=ctx))
        return urllib.request.build_opener(*handlers).open(request, timeout=timeout)

    def _post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"{self.client_url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with self._open(req, timeout=5) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"etcd {path}: {e.code} {e.read().decode(errors='replace')}") from None

    def revision(self) -> int:
        return int(self._post("/v3/kv/range", {"key": _b64("\0")})["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact history up to `revision` (default: the current one)."""
        rev = self.revision() if revision is None else revision
        self._post("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def get_prefix(self, prefix: str) -> dict[str, KV]:
        out = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})
        kvs = {}
        for kv in out.get("kvs", []):
            key = base64.b64decode(kv["key"]).decode()
            kvs[key] = KV(
                key,
                base64.b64decode(kv.get("value", "")).decode(),
                int(kv.get("lease", 0)),
                int(kv["create_revision"]),
                int(kv["mod_revision"]),
            )
        return kvs

    def put(self, key: str, value: str, lease: int = 0) -> None:
        self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value), "lease": str(lease)})

    def delete(self, key: str) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(key)})

    def lease_ttl(self, lease_id: int) -> int:
        """Remaining TTL, -1 if etcd does not know the lease."""
        return int(self._post("/v3/lease/timetolive", {"ID": str(lease_id)}).get("TTL", -1))

    def revoke(self, lease_id: int) -> None:
        self._post("/v3/lease/revoke", {"ID": str(lease_id)})


class TcpProxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target_port>, with partition()/heal()."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._cut = False
        self._closed = False
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if self._cut:
                _close(conn)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                _close(conn)
                continue
            with self._lock:
                self._socks |= {conn, upstream}
            self._spawn(self._pump, conn, upstream)
            self._spawn(self._pump, upstream, conn)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks -= {src, dst}
            _close(src)
            _close(dst)

    def partition(self) -> None:
        """Drop every connection now and refuse new ones."""
        self._cut = True
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            _close(s)

    def heal(self) -> None:
        self._cut = False

    def close(self) -> None:
        self._closed = True
        self.partition()
        _close(self._listener)
        for t in self._threads:
            t.join(timeout=1)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
