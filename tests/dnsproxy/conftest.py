"""A real DNS server for the proxy's tests: Debian's dnsmasq on loopback,
answering a few names from its command line. Skipped (a failure under
CI=true) when dnsmasq is not installed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import dns.message
import dns.query
import pytest

NAMES = {"allowed.test": "192.0.2.10", "other.test": "192.0.2.20"}
TTL = 30


@dataclass
class DnsServer:
    host: str
    port: int
    proc: subprocess.Popen

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port


def _free_port_both() -> int:
    """A loopback port free for UDP and TCP alike (dnsmasq binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _start(exe: str) -> DnsServer:
    port = _free_port_both()
    argv = [exe, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
            "--listen-address=127.0.0.1", f"--port={port}", f"--local-ttl={TTL}", "--pid-file=", "--log-queries",
            "--log-facility=-"]
    if os.geteuid() == 0:
        argv.append("--user=root")  # no switch to a user this machine may not have
    argv += [f"--address=/{n}/{ip}" for n, ip in NAMES.items()]
    return DnsServer("127.0.0.1", port, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def dnsmasq() -> Iterator[DnsServer]:
    exe = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None)
    if exe is None:
        pytest.skip("dnsmasq is not installed (scripts/install.sh installs Debian's dnsmasq-base)")
    # The port is free when picked, but the other worker's servers may take
    # it before dnsmasq binds: then a new port, a few times.
    for _ in range(5):
        server = _start(exe)
        proc = server.proc
        try:
            # Ready when it answers; a generous bound only against a hang.
            deadline = time.monotonic() + 30
            while True:
                try:
                    dns.query.udp(dns.message.make_query("allowed.test", "A"), "127.0.0.1", port=server.port, timeout=0.1)
                    break
                except Exception:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        _stop(proc)  # before reading its stderr to the end
                        raise RuntimeError(f"dnsmasq did not start: {proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
        except RuntimeError as e:
            if "Address already in use" in str(e):
                continue
            raise
        break
    else:
        raise RuntimeError("dnsmasq found every port it was given taken")
    try:
        yield server
    finally:
        _stop(proc)
