"""A real etcd for tests, and a TCP proxy to cut a client off from it.

`EtcdServer` is the project's one etcd launcher (demo/etcd_process.py:
/usr/bin/etcd, single member, on 127.0.0.1 with free client and peer ports
and a private data directory; `close()` (or the context manager) always
stops the process and removes the directory, and etcd gets SIGKILL from
the kernel if the test process dies first; start() waits for etcd's own
readiness notice). Here election and heartbeat are fast (100 ms / 10 ms),
so it starts in about 0.1 s and accepts 1 s lease TTLs; auto-compaction is
off (compact() does it on demand). Small sync helpers talk to etcd's JSON
gateway (/v3/...), so a test can look at or poke the store without the
code under test.

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
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from demo.etcd_process import EtcdProcess


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


class EtcdServer(EtcdProcess):
    """The project's etcd launcher (demo/etcd_process.py) as the kvstore
    tests want it: fast elections, and a few sync calls to etcd's JSON
    gateway. `pki` set: clients must use https and present a certificate
    the test CA signed (--client-cert-auth)."""

    def __init__(self, parent_dir: Path | None = None, pki: Pki | None = None) -> None:
        tls = [] if pki is None else [
            "--cert-file", str(pki.server_crt), "--key-file", str(pki.server_key),
            "--client-cert-auth", "--trusted-ca-file", str(pki.ca_crt),
        ]
        super().__init__(parent_dir, name="test", https=pki is not None, fast=True, extra_args=tls)
        self.pki = pki

    # -- the JSON gateway ----------------------------------------------------

    def healthy(self) -> bool:
        try:
            with self._open(urllib.request.Request(f"{self.client_url}/health"), timeout=1) as r:
                return json.load(r).get("health") == "true"
        except (OSError, ValueError):
            return False

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
