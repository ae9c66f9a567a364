"""Thin wrapper over the bpf(2) system call: maps, pins, program info.

Owns every raw bpf() call the Python side makes (map create/lookup/update/
delete/iterate, pin and open pins, program ids and run-time statistics, and the
two-instruction fail-closed program). Does I/O (syscalls); no bcc import, so a
process that only writes maps or reads statistics never needs the compiler.

Why raw syscalls: bcc's Python table classes cannot reopen a pinned map by
path, and a restarted agent must adopt the pinned maps of the previous one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from redirect.errors import DatapathError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_NR_BPF = 321  # x86_64

# enum bpf_cmd
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
PROG_LOAD, OBJ_PIN, OBJ_GET = 5, 6, 7
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_BATCH = 24
LINK_CREATE, LINK_UPDATE = 28, 29
LINK_DETACH = 34
LINK_TYPE_CGROUP = 3  # enum bpf_link_type
CGROUP_INET4_CONNECT, CGROUP_INET6_CONNECT = 10, 11  # enum bpf_attach_type
ENABLE_STATS = 32

# enum bpf_map_type (the ones we use)
MAP_HASH, MAP_ARRAY, MAP_LRU_HASH, MAP_LPM_TRIE, MAP_HASH_OF_MAPS, MAP_RINGBUF = 1, 2, 9, 11, 13, 27
F_NO_PREALLOC = 1
ANY, NOEXIST, EXIST = 0, 1, 2
PROG_SCHED_CLS = 3
TC_ACT_OK = 0
TC_ACT_SHOT = 2

_ATTR_SIZE = 144


class BPFError(OSError, DatapathError):
    """A bpf() call failed; errno and the operation are kept for the message."""


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    ret = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BPFError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return ret


def _attr(payload: bytes) -> ctypes.Array:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    ctypes.memmove(buf, payload, len(payload))
    return buf


def create_map(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    flags: int = 0,
    name: str = "",
    inner_map_fd: int = 0,
) -> int:
    payload = struct.pack(
        "=7I16s", map_type, key_size, value_size, max_entries, flags, inner_map_fd, 0, name.encode()[:15]
    )
    return _bpf(MAP_CREATE, _attr(payload))


def pin(fd: int, path: Path) -> None:
    p = ctypes.create_string_buffer(str(path).encode())
    _bpf(OBJ_PIN, _attr(struct.pack("=QII", ctypes.addressof(p), fd, 0)))


def obj_get(path: Path) -> int:
    p = ctypes.create_string_buffer(str(path).encode())
    try:
        return _bpf(OBJ_GET, _attr(struct.pack("=QII", ctypes.addressof(p), 0, 0)))
    except BPFError as e:
        raise BPFError(e.errno, f"opening pinned object {path}: {os.strerror(e.errno)}") from None


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """A bpf_link attaching prog_fd to target_fd (a cgroup directory's fd).
    The link, not the attachment, owns the program: pin it to keep it past
    this process, unpin it (with no fd left) to detach."""
    return _bpf(LINK_CREATE, _attr(struct.pack("=IIII", prog_fd, target_fd, attach_type, 0)))


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Swap the link's program in one step: no connect() runs without one."""
    _bpf(LINK_UPDATE, _attr(struct.pack("=III", link_fd, new_prog_fd, 0)))


def link_detach(link_fd: int) -> None:
    """Detach the link now. Unpinning alone is not enough: bpffs drops its
    reference after an RCU grace period and a workqueue pass, so the program
    can go on running for a while after the pin is gone."""
    _bpf(LINK_DETACH, _attr(struct.pack("=I", link_fd)))


def _elem(cmd: int, fd: int, key: bytes, value: ctypes.Array | None, flags: int = 0) -> int:
    k = ctypes.create_string_buffer(key, len(key))
    vaddr = ctypes.addressof(value) if value is not None else 0
    return _bpf(cmd, _attr(struct.pack("=IIQQQ", fd, 0, ctypes.addressof(k), vaddr, flags)))


def lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    v = ctypes.create_string_buffer(value_size)
    try:
        _elem(MAP_LOOKUP_ELEM, fd, key, v)
    except BPFError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def update(fd: int, key: bytes, value: bytes, flags: int = ANY) -> None:
    v = ctypes.create_string_buffer(value, len(value))
    _elem(MAP_UPDATE_ELEM, fd, key, v, flags)


def update_fd_value(fd: int, key: bytes, inner_fd: int) -> None:
    """Insert a map into a map-of-maps: the value written is the inner map's fd."""
    update(fd, key, struct.pack("=I", inner_fd))


def delete(fd: int, key: bytes) -> bool:
    try:
        _elem(MAP_DELETE_ELEM, fd, key, None)
    except BPFError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def keys(fd: int, key_size: int) -> list[bytes]:
    out: list[bytes] = []
    cur: bytes | None = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        k = ctypes.create_string_buffer(cur, key_size) if cur is not None else None
        attr = _attr(struct.pack("=IIQQ", fd, 0, ctypes.addressof(k) if k is not None else 0, ctypes.addressof(nxt)))
        try:
            _bpf(MAP_GET_NEXT_KEY, attr)
        except BPFError as e:
            if e.errno == errno.ENOENT:
                return out
            raise
        cur = nxt.raw
        out.append(cur)


def items(fd: int, key_size: int, value_size: int) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for k in keys(fd, key_size):
        v = lookup(fd, k, value_size)
        if v is not None:  # raced with a delete
            out[k] = v
    return out


def items_batch(fd: int, key_size: int, value_size: int, chunk: int = 4096) -> dict[bytes, bytes]:
    """items(), a chunk of entries per syscall (BPF_MAP_LOOKUP_BATCH, hash
    maps, Linux 5.6): a full 64k conntrack table in a few calls instead of
    130,000. Falls back to items() where the kernel does not offer it."""
    out: dict[bytes, bytes] = {}
    keys_buf = ctypes.create_string_buffer(key_size * chunk)
    values_buf = ctypes.create_string_buffer(value_size * chunk)
    # The batch token is the next hash bucket (a u32); room for a key anyway.
    in_batch = ctypes.create_string_buffer(max(key_size, 8))
    out_batch = ctypes.create_string_buffer(max(key_size, 8))
    first = True
    while True:
        attr = _attr(struct.pack(
            "=QQQQIIQQ", 0 if first else ctypes.addressof(in_batch), ctypes.addressof(out_batch),
            ctypes.addressof(keys_buf), ctypes.addressof(values_buf), chunk, fd, 0, 0,
        ))
        done = False
        try:
            _bpf(MAP_LOOKUP_BATCH, attr)
        except BPFError as e:
            if e.errno == errno.EINVAL and first:
                return items(fd, key_size, value_size)
            if e.errno != errno.ENOENT:
                raise
            done = True  # the last chunk (count says how many it holds, maybe none)
        count, = struct.unpack_from("=I", attr.raw, 32)
        kraw, vraw = keys_buf.raw, values_buf.raw
        for i in range(count):
            out[kraw[i * key_size:(i + 1) * key_size]] = vraw[i * value_size:(i + 1) * value_size]
        if done:
            return out
        ctypes.memmove(in_batch, out_batch, len(out_batch))
        first = False


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = ctypes.create_string_buffer(96)
    _bpf(OBJ_GET_INFO_BY_FD, _attr(struct.pack("=IIQ", fd, 96, ctypes.addressof(info))))
    t, i, ks, vs, me, fl, name = struct.unpack_from("=6I16s", info.raw)
    return MapInfo(t, i, ks, vs, me, fl, name.rstrip(b"\0").decode())


@dataclass(frozen=True, slots=True)
class ProgInfo:
    type: int
    id: int
    tag: str
    name: str
    run_time_ns: int
    run_cnt: int


def prog_info(fd: int) -> ProgInfo:
    info = ctypes.create_string_buffer(256)
    _bpf(OBJ_GET_INFO_BY_FD, _attr(struct.pack("=IIQ", fd, 256, ctypes.addressof(info))))
    raw = info.raw
    t, i = struct.unpack_from("=II", raw, 0)
    tag = raw[8:16].hex()
    name = raw[64:80].rstrip(b"\0").decode(errors="replace")
    run_time_ns, run_cnt = struct.unpack_from("=QQ", raw, 192)
    return ProgInfo(t, i, tag, name, run_time_ns, run_cnt)


def link_cgroup_id(fd: int) -> int | None:
    """The cgroup a cgroup link is attached to (its id, the directory's inode
    number in cgroup2); None for another kind of link or a detached one."""
    info = ctypes.create_string_buffer(64)
    _bpf(OBJ_GET_INFO_BY_FD, _attr(struct.pack("=IIQ", fd, 64, ctypes.addressof(info))))
    link_type, _id, _prog_id = struct.unpack_from("=III", info.raw, 0)
    if link_type != LINK_TYPE_CGROUP:
        return None
    (cgroup_id,) = struct.unpack_from("=Q", info.raw, 16)
    return cgroup_id or None


def test_run(prog_fd: int, data: bytes, repeat: int) -> tuple[int, int]:
    """BPF_PROG_TEST_RUN: (return value, mean duration in ns per run)."""
    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(len(data) + 256)
    attr = _attr(struct.pack("=IIIIQQII", prog_fd, 0, len(data), len(dout), ctypes.addressof(din),
                             ctypes.addressof(dout), repeat, 0))
    _bpf(10, attr)
    retval, = struct.unpack_from("=I", attr.raw, 4)
    duration, = struct.unpack_from("=I", attr.raw, 36)
    return retval, duration


def load_drop_program(name: str = "ciliate_block") -> int:
    """Load `r0 = TC_ACT_SHOT; exit`: what an endpoint runs when its real
    program cannot be compiled or loaded (fail closed). Needs no compiler."""
    return load_constant_program(TC_ACT_SHOT, name)


def load_constant_program(verdict: int, name: str) -> int:
    """A sched_cls program that returns `verdict` (benchmarks use TC_ACT_OK
    to measure the cost of the tc hook itself)."""
    insns = struct.pack("=BBhi", 0xB7, 0, 0, verdict) + struct.pack("=BBhi", 0x95, 0, 0, 0)
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    payload = struct.pack(
        "=IIQQIIQII16s",
        PROG_SCHED_CLS,
        len(insns) // 8,
        ctypes.addressof(ibuf),
        ctypes.addressof(lic),
        0,
        0,
        0,
        0,
        0,
        name.encode()[:15],
    )
    return _bpf(PROG_LOAD, _attr(payload))
