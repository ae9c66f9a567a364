"""What the upstream-port program (bpf/bpf_sock.c) costs a connect().

It is attached to the cgroup v2 root, so every connect() on the machine runs
it; only the proxy's marked upstreams get past its first tests. Measured in
one scratch network namespace, in the same run, side by side:

  - an ordinary connect() (no mark) with the program attached, against the
    same with nothing attached: what every other process pays;
  - a marked upstream connect() (SO_MARK 0x0B00, IP_TRANSPARENT,
    IP_BIND_ADDRESS_NO_PORT, as Envoy's original_src makes them) whose port
    the program picks, against the kernel picking it (nothing attached).

Each connect goes to a listener on 127.0.0.1 and is closed with an RST
(SO_LINGER 0) so no TIME_WAIT fills the range. Rounds alternate the
configurations; the median of the rounds is printed. Root, a kernel with
cgroup v2 and bcc. Everything it makes is removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redirect.datapath import Datapath  # noqa: E402
from redirect import upstream_ports  # noqa: E402
from redirect.upstream_ports import PortRange  # noqa: E402
from tests.kernelnode import in_netns  # noqa: E402

NETNS = f"cilbenchup-{os.getpid()}"
CONNECTS = 2000
ROUNDS = 5
RANGE = PortRange(61000, 65535)
LINGER_RST = struct.pack("ii", 1, 0)


@contextlib.contextmanager
def scratch_netns() -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


@contextlib.contextmanager
def listener() -> Iterator[tuple[str, int]]:
    with in_netns(NETNS):
        srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = srv.accept()
                conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()
    finally:
        stop.set()
        t.join()
        srv.close()


def connect_rate(dst: tuple[str, int], marked: bool) -> float:
    """connect()s per second, socket creation to close."""
    t0 = time.perf_counter()
    for _ in range(CONNECTS):
        with in_netns(NETNS):
            s = socket.socket()
        if marked:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x0B00)
            s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
            s.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
            s.bind(("127.0.0.1", 0))
        s.connect(dst)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.close()
    return CONNECTS / (time.perf_counter() - t0)


def main() -> int:
    if os.geteuid() != 0:
        print("bench_upstream_ports: needs root (network namespace, cgroup BPF)", file=sys.stderr)
        return 2
    pins = Path(f"/sys/fs/bpf/cilbenchup-{os.getpid()}")
    state = Path(tempfile.mkdtemp(prefix="cilbenchup-"))
    rates: dict[str, list[float]] = {k: [] for k in ("plain, nothing attached", "plain, program attached",
                                                      "upstream, kernel's port", "upstream, program's port")}
    try:
        with scratch_netns(), listener() as dst:
            dp = Datapath(pins, state, netns=NETNS)
            try:
                for _ in range(ROUNDS):
                    rates["plain, nothing attached"].append(connect_rate(dst, False))
                    rates["upstream, kernel's port"].append(connect_rate(dst, True))
                    dp.choose_upstream_ports(RANGE)
                    rates["plain, program attached"].append(connect_rate(dst, False))
                    rates["upstream, program's port"].append(connect_rate(dst, True))
                    upstream_ports.remove(pins, state)  # detach (at once) for the next round's baseline
                stats = dp.upstream_port_stats()
            finally:
                dp.teardown()
    finally:
        shutil.rmtree(pins, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"upstream-port program: {CONNECTS} connects x {ROUNDS} rounds to 127.0.0.1 in a scratch netns, "
          f"range {RANGE}, median connects/s")
    for base, test in (("plain, nothing attached", "plain, program attached"),
                       ("upstream, kernel's port", "upstream, program's port")):
        ratio = med[test] / med[base]
        print(f"  {test:28} {med[test]:9.0f}/s   vs {base:26} {med[base]:9.0f}/s   ratio {ratio:.3f}")
    print(f"  the program assigned {stats.assigned} ports, skipped {stats.busy} busy, refused {stats.exhausted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
