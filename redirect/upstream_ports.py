"""Source ports of the proxy's upstream connections: chosen by the datapath
from the agent's range, not from the node's ip_local_port_range.

Does I/O (cgroup v2 mount, bcc, bpf links, a socket for the netns cookie).
Why it exists and what the program does: bpf/bpf_sock.c.

    ports = PortRange.parse("61000-65535")
    dp.choose_upstream_ports(ports)     # Datapath calls install(); idempotent
    read_stats(maps)            # UpstreamStats(assigned, busy, exhausted)

The program is attached to the cgroup v2 root, so it sees the connect() of
every process on the machine, and acts only on sockets of the node's network
namespace (its cookie) that carry the proxy's upstream mark: Envoy needs no
cgroup of its own, and an Envoy the agent did not start (the compose demo's)
is covered too. The attachment is a bpf_link pinned beside the maps: it
outlives the agent, a restart adopts it (or swaps its program in one step),
and removing the pins (teardown) detaches it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from redirect import bpfsys, layout, loader
from redirect.errors import PlumbingError
from redirect.maps import PinnedMaps
from redirect.netns import run_in

LINK_PIN = "ciliate_link_upstream4"
LINK_PIN6 = "ciliate_link_upstream6"
# (function in bpf_sock.c, cgroup hook, pin of its bpf_link)
HOOKS = (
    ("upstream_connect4", bpfsys.CGROUP_INET4_CONNECT, LINK_PIN),
    ("upstream_connect6", bpfsys.CGROUP_INET6_CONNECT, LINK_PIN6),
)
RECORD = "upstream-ports.json"
DEFAULT_CGROUP_MOUNT = Path("/run/ciliate/cgroupv2")  # where we mount cgroup2 if nothing has
SO_NETNS_COOKIE = 71


@dataclass(frozen=True)
class PortRange:
    lo: int
    hi: int

    @classmethod
    def parse(cls, text: str) -> "PortRange":
        """"61000-65535" -> PortRange(61000, 65535); ValueError says why not."""
        parts = text.strip().split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{text!r} is not a port range LO-HI, e.g. 61000-65535")
        rng = cls(int(parts[0]), int(parts[1]))
        if not 1024 <= rng.lo <= rng.hi <= 65535:
            raise ValueError(f"{text!r}: ports must satisfy 1024 <= LO <= HI <= 65535")
        if rng.size < 256:
            raise ValueError(f"{text!r}: {rng.size} ports is too few; give at least 256")
        return rng

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def overlaps(self, other: "PortRange") -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def __str__(self) -> str:
        return f"{self.lo}-{self.hi}"


DEFAULT_RANGE = PortRange(61000, 65535)
POD_DEFAULT_RANGE = PortRange(32768, 60999)  # Linux's default ephemeral range, what pods use


@dataclass(frozen=True)
class UpstreamStats:
    assigned: int  # upstream connections given a port from the range
    busy: int  # probed ports skipped: 4-tuple taken, claimed, or bound by another socket
    exhausted: int  # connects refused: no free port found


@dataclass(frozen=True)
class Installed:
    ports: PortRange
    cgroup: Path
    program: str  # the program's name (digest), as `bpftool cgroup show` would list it


def find_cgroup2(mountinfo: str | None = None) -> Path | None:
    """The first cgroup v2 mount of the whole hierarchy (root "/") this process
    sees, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified; None if none."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if len(fields) >= 5 and tail and tail[0] == "cgroup2" and fields[3] == "/":
            return Path(fields[4].replace("\\040", " "))
    return None


def ensure_cgroup2(cgroup_root: Path | None) -> Path:
    """The cgroup v2 root to attach to: the one given, the one mounted, or a
    new mount at DEFAULT_CGROUP_MOUNT (what Cilium does at /run/cilium)."""
    if cgroup_root is not None:
        if not (cgroup_root / "cgroup.controllers").exists():
            raise PlumbingError(f"--cgroup-root {cgroup_root}: not a cgroup v2 mount (no cgroup.controllers)")
        return cgroup_root
    found = find_cgroup2()
    if found is not None:
        return found
    DEFAULT_CGROUP_MOUNT.mkdir(parents=True, exist_ok=True)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.mount(b"none", str(DEFAULT_CGROUP_MOUNT).encode(), b"cgroup2", 0, None) != 0:
        err = ctypes.get_errno()
        raise PlumbingError(f"no cgroup v2 mount, and mounting one at {DEFAULT_CGROUP_MOUNT} failed: {os.strerror(err)}")
    return DEFAULT_CGROUP_MOUNT


def netns_cookie(netns: str | None) -> int:
    """The kernel's cookie of a network namespace (this process's, or a named
    one under /run/netns), read from a socket made there."""
    return run_in(netns, _socket_cookie, "netns-cookie")


def _socket_cookie() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def write_config(maps: PinnedMaps, ports: PortRange, cookie: int) -> None:
    cfg = layout.UpstreamCfg(netns_cookie=cookie, port_lo=ports.lo, port_hi=ports.hi)
    bpfsys.update(maps.fds["upstream_cfg"], struct.pack("=I", 0), bytes(cfg))


def install(
    maps: PinnedMaps, pin_dir: Path, state_dir: Path, ports: PortRange, *,
    cgroup_root: Path | None = None, netns: str | None = None, header: tuple[Path, str],
) -> Installed:
    """Configure, then attach (or adopt) the connect hooks, one per family.
    Idempotent: unchanged programs on the same cgroup are kept; changed ones
    replace the old in one step each. Raises PlumbingError with the reason
    when it cannot."""
    cgroup = ensure_cgroup2(cgroup_root)
    write_config(maps, ports, netns_cookie(netns))  # before the programs can run
    header_path, header_digest = header
    digest = hashlib.sha256((header_digest + loader.flatten(loader.SOCK_ENTRY)).encode()).hexdigest()[:8]
    name = f"ciliate_sock_{digest}"
    record_path = state_dir / RECORD
    pins = [pin_dir / pin for _, _, pin in HOOKS]
    # A cgroup is known by its id, not its path: a restarted container sees
    # the same /sys/fs/cgroup over a new cgroup, and a link on the old one
    # would cover nobody.
    cgroup_id = os.stat(cgroup).st_ino
    if any(p.exists() and _linked_cgroup(p) != cgroup_id for p in pins):
        remove(pin_dir, state_dir)  # attached elsewhere before: detach there
    if all(p.exists() for p in pins) and _read_record(record_path).get("program") == name:
        _write_record(record_path, name, cgroup, ports)
        return Installed(ports, cgroup, name)
    try:
        fds, module = loader.load_functions(
            0, header_path, loader.SOCK_ENTRY, tuple(fn for fn, _, _ in HOOKS),
            cgroup_attach={fn: hook for fn, hook, _ in HOOKS},
        )
    except Exception as e:
        raise PlumbingError(f"the upstream-port program did not load: {e}") from e
    try:
        for fn, hook, pin in HOOKS:
            _attach(fds[fn], hook, cgroup, pin_dir / pin)
    finally:
        with contextlib.suppress(Exception):
            module.cleanup()  # type: ignore[attr-defined]
    _write_record(record_path, name, cgroup, ports)
    return Installed(ports, cgroup, name)


def _attach(prog: int, hook: int, cgroup: Path, link_pin: Path) -> None:
    """Swap the pinned link's program, or attach a new link and pin it."""
    if link_pin.exists():
        link = bpfsys.obj_get(link_pin)
        try:
            bpfsys.link_update(link, prog)
        finally:
            os.close(link)
        return
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        link = bpfsys.link_create(prog, cg, hook)
    except bpfsys.BPFError as e:
        raise PlumbingError(f"attaching the upstream-port program to {cgroup}: {e.strerror}") from e
    finally:
        os.close(cg)
    try:
        bpfsys.pin(link, link_pin)
    finally:
        os.close(link)


def remove(pin_dir: Path, state_dir: Path) -> None:
    """Detach the hooks, then drop their pins and record. Idempotent."""
    for _, _, pin in HOOKS:
        link_pin = pin_dir / pin
        try:
            fd = bpfsys.obj_get(link_pin)
        except bpfsys.BPFError:
            fd = -1
        if fd >= 0:
            try:
                bpfsys.link_detach(fd)
            except bpfsys.BPFError as e:
                if e.errno != errno.ENOLINK:  # detached already
                    raise
            finally:
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            link_pin.unlink()
    with contextlib.suppress(FileNotFoundError):
        (state_dir / RECORD).unlink()


def _linked_cgroup(link_pin: Path) -> int | None:
    try:
        fd = bpfsys.obj_get(link_pin)
    except bpfsys.BPFError:
        return None
    try:
        return bpfsys.link_cgroup_id(fd)
    finally:
        os.close(fd)


def _write_record(path: Path, program: str, cgroup: Path, ports: PortRange) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"program": program, "cgroup": str(cgroup), "ports": str(ports)}) + "\n")


def _read_record(path: Path) -> dict:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def read_stats(maps: PinnedMaps, ncpus: int) -> UpstreamStats:
    fd = maps.fds["upstream_stats"]
    vals = []
    for slot in layout.UpstreamStat:
        raw = bpfsys.lookup(fd, struct.pack("=I", slot), 8 * ncpus) or b""
        vals.append(sum(struct.unpack_from("=Q", raw, i * 8)[0] for i in range(len(raw) // 8)))
    return UpstreamStats(*vals)


__all__ = [
    "DEFAULT_RANGE", "POD_DEFAULT_RANGE", "Installed", "PortRange", "UpstreamStats", "find_cgroup2", "install",
    "netns_cookie", "read_stats", "remove",
]
