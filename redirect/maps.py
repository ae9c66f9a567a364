"""The pinned maps of one install: create them once, adopt them afterwards.

Does I/O (bpf() syscalls, bpffs). Every map lives under `pin_dir`
(default /sys/fs/bpf/tc/globals, files named ciliate_*), so the maps outlive
the process that made them; a new process opens the pins (creating the ones
an older version did not have, such as the IPv6 maps) and checks that
their shapes match this code's layouts, refusing (never recreating) a map of
another shape, which would silently drop the enforced state.

    ciliate_ipcache        LPM trie   IPv4 prefix -> identity
    ciliate_ipcache6       LPM trie   IPv6 prefix -> identity
    ciliate_lxc            hash       local endpoint IPv4 -> id, identity, flags
    ciliate_lxc6           hash       local endpoint IPv6 -> the same
    ciliate_ifindex        hash       endpoint veth ifindex -> id, IPv4 (the shared
                                      program finds its endpoint by skb->ifindex)
    ciliate_policy         hash of maps: endpoint id -> ciliate_policy_<id>
    ciliate_policy_<id>    LPM trie   one endpoint's policy (see policymap.py)
    ciliate_ct             LRU hash   conntrack of IPv4 flows
    ciliate_ct6            LRU hash   conntrack of IPv6 flows
    ciliate_events         ring buffer of verdict events
    ciliate_metrics        per-CPU hash  (verdict, reason, direction) -> packets
    ciliate_upstream_cfg   array      the connect hook's range and node netns (bpf_sock.c)
    ciliate_upstream_stats per-CPU array  ports assigned, probes busy, connects refused
    ciliate_upstream_claims LRU hash  ports handed out in the last second
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path

from redirect import bpfsys, layout, policymap

MAP_PERCPU_HASH = 5  # enum bpf_map_type; bpfsys lists only the types it needed before
MAP_PERCPU_ARRAY = 6
from redirect.errors import DatapathError

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/tc/globals")


@dataclass(frozen=True)
class MapSizes:
    ipcache: int = 65536
    endpoints: int = 1024
    policy_entries: int = 16384  # per endpoint, in kernel entries (port blocks)
    conntrack: int = 65536
    events_bytes: int = 256 * 1024

    @property
    def policy_map_max(self) -> int:
        # Room for the old and the new entries at once: the writer adds before
        # it deletes. An LPM trie allocates per entry, so this costs nothing.
        return 2 * self.policy_entries


@dataclass(frozen=True)
class _Spec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0


def _ip4(addr: IPv4Address) -> bytes:
    return addr.packed


class PinnedMaps:
    """File descriptors of one install's maps; create-or-adopt on open."""

    def __init__(self, pin_dir: Path = DEFAULT_PIN_DIR, sizes: MapSizes = MapSizes()) -> None:
        self.pin_dir = Path(pin_dir)
        self.sizes = sizes
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        s = sizes
        self._specs = {
            "ipcache": _Spec("ciliate_ipcache", bpfsys.MAP_LPM_TRIE, ctypes.sizeof(layout.IpcacheKey),
                             ctypes.sizeof(layout.IpcacheValue), s.ipcache, bpfsys.F_NO_PREALLOC),
            "ipcache6": _Spec("ciliate_ipcache6", bpfsys.MAP_LPM_TRIE, ctypes.sizeof(layout.Ipcache6Key),
                              ctypes.sizeof(layout.IpcacheValue), s.ipcache, bpfsys.F_NO_PREALLOC),
            "lxc6": _Spec("ciliate_lxc6", bpfsys.MAP_HASH, ctypes.sizeof(layout.Lxc6Key),
                          ctypes.sizeof(layout.LxcValue), s.endpoints),
            "ct6": _Spec("ciliate_ct6", bpfsys.MAP_LRU_HASH, ctypes.sizeof(layout.Ct6Key),
                         ctypes.sizeof(layout.CtValue), s.conntrack),
            "lxc": _Spec("ciliate_lxc", bpfsys.MAP_HASH, ctypes.sizeof(layout.LxcKey),
                         ctypes.sizeof(layout.LxcValue), s.endpoints),
            "ifindex": _Spec("ciliate_ifindex", bpfsys.MAP_HASH, ctypes.sizeof(layout.IfindexKey),
                             ctypes.sizeof(layout.IfindexValue), s.endpoints),
            "policy": _Spec("ciliate_policy", bpfsys.MAP_HASH_OF_MAPS, 4, 4, s.endpoints),
            "ct": _Spec("ciliate_ct", bpfsys.MAP_LRU_HASH, ctypes.sizeof(layout.CtKey),
                        ctypes.sizeof(layout.CtValue), s.conntrack),
            "events": _Spec("ciliate_events", bpfsys.MAP_RINGBUF, 0, 0, s.events_bytes),
            "metrics": _Spec("ciliate_metrics", MAP_PERCPU_HASH, ctypes.sizeof(layout.MetricsKey),
                             ctypes.sizeof(layout.MetricsValue), layout.METRICS_MAX),
            "upstream_cfg": _Spec("ciliate_upstream_cfg", bpfsys.MAP_ARRAY, 4, ctypes.sizeof(layout.UpstreamCfg), 1),
            "upstream_stats": _Spec("ciliate_upstream_stats", MAP_PERCPU_ARRAY, 4, 8, len(layout.UpstreamStat)),
            "upstream_claims": _Spec("ciliate_upstream_claims", bpfsys.MAP_LRU_HASH,
                                     ctypes.sizeof(layout.UpstreamClaimKey), 8, layout.UPSTREAM_CLAIMS_MAX),
        }
        self._inner_spec = _Spec("ciliate_pol", bpfsys.MAP_LPM_TRIE, policymap.KEY_SIZE, policymap.VALUE_SIZE,
                                 s.policy_map_max, bpfsys.F_NO_PREALLOC)
        self.fds: dict[str, int] = {}
        self._policy_fds: dict[int, int] = {}
        try:
            for key, spec in self._specs.items():
                self.fds[key] = self._open(spec)
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.pin_dir / name

    def _open(self, spec: _Spec) -> int:
        p = self.path(spec.name)
        if p.exists():
            fd = bpfsys.obj_get(p)
            info = bpfsys.map_info(fd)
            want = (spec.type, spec.key_size, spec.value_size)
            have = (info.type, info.key_size, info.value_size)
            if have != want:
                os.close(fd)
                raise DatapathError(
                    f"{p}: pinned map has type/key/value {have}, this version needs {want}; "
                    "remove the pin directory to start over (drops enforced state)"
                )
            return fd
        inner = 0
        if spec.type == bpfsys.MAP_HASH_OF_MAPS:
            i = self._inner_spec
            inner = bpfsys.create_map(i.type, i.key_size, i.value_size, i.max_entries, i.flags, i.name)
        try:
            fd = bpfsys.create_map(spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags,
                                   spec.name, inner)
        finally:
            if inner:
                os.close(inner)
        try:
            bpfsys.pin(fd, p)
        except bpfsys.BPFError:
            # Another process pinned it first: use theirs.
            os.close(fd)
            return bpfsys.obj_get(p)
        return fd

    def close(self) -> None:
        for fd in list(self.fds.values()) + list(self._policy_fds.values()):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        self._policy_fds.clear()

    # -- per-endpoint policy maps -----------------------------------------
    def policy_pin(self, endpoint_id: int) -> Path:
        return self.path(f"ciliate_policy_{endpoint_id}")

    def policy_fd(self, endpoint_id: int, create: bool = True) -> int | None:
        """The endpoint's policy map, created (empty) and linked if needed."""
        fd = self._policy_fds.get(endpoint_id)
        if fd is not None:
            return fd
        p = self.policy_pin(endpoint_id)
        if p.exists():
            fd = bpfsys.obj_get(p)
        elif not create:
            return None
        else:
            i = self._inner_spec
            fd = bpfsys.create_map(i.type, i.key_size, i.value_size, i.max_entries, i.flags,
                                   f"ciliate_pol{endpoint_id}"[:15])
            bpfsys.pin(fd, p)
        bpfsys.update_fd_value(self.fds["policy"], struct.pack("=I", endpoint_id), fd)
        self._policy_fds[endpoint_id] = fd
        return fd

    def drop_policy_map(self, endpoint_id: int) -> None:
        bpfsys.delete(self.fds["policy"], struct.pack("=I", endpoint_id))
        fd = self._policy_fds.pop(endpoint_id, None)
        if fd is not None:
            os.close(fd)
        p = self.policy_pin(endpoint_id)
        if p.exists():
            p.unlink()

    def policy_endpoints(self) -> list[int]:
        ids = {struct.unpack("=I", k)[0] for k in bpfsys.keys(self.fds["policy"], 4)}
        ids |= {int(p.name.rsplit("_", 1)[1]) for p in self.pin_dir.glob("ciliate_policy_*")}
        return sorted(ids)

    def read_policy(self, endpoint_id: int) -> dict[policymap.KernelKey, policymap.KernelValue]:
        fd = self.policy_fd(endpoint_id, create=False)
        if fd is None:
            return {}
        raw = bpfsys.items(fd, policymap.KEY_SIZE, policymap.VALUE_SIZE)
        return {policymap.decode_key(k): policymap.decode_value(v) for k, v in raw.items()}

    # -- ipcache (one map per family) ------------------------------------------
    @staticmethod
    def _ipcache_key(net: IPv4Network | IPv6Network) -> tuple[str, bytes]:
        if net.version == 6:
            return "ipcache6", struct.pack("=I16s", net.prefixlen, net.network_address.packed)
        return "ipcache", struct.pack("=I4s", net.prefixlen, net.network_address.packed)

    def read_ipcache(self) -> dict[IPv4Network | IPv6Network, int]:
        out: dict[IPv4Network | IPv6Network, int] = {}
        for name, size in (("ipcache", 4), ("ipcache6", 16)):
            for k, v in bpfsys.items(self.fds[name], 4 + size, 8).items():
                plen = struct.unpack_from("=I", k)[0]
                out[ip_network((k[4:], plen))] = struct.unpack("=II", v)[0]
        return out

    def write_ipcache(self, net: IPv4Network | IPv6Network, identity: int) -> None:
        name, key = self._ipcache_key(net)
        bpfsys.update(self.fds[name], key, struct.pack("=II", identity, 0))

    def delete_ipcache(self, net: IPv4Network | IPv6Network) -> bool:
        """False when the kernel had no such entry."""
        name, key = self._ipcache_key(net)
        return bpfsys.delete(self.fds[name], key)

    # -- local endpoints (one map per family, the same value) ------------------
    def read_lxc(self) -> dict[IPv4Address | IPv6Address, tuple[int, int, int]]:
        out: dict[IPv4Address | IPv6Address, tuple[int, int, int]] = {}
        for name, size, cls in (("lxc", 4, IPv4Address), ("lxc6", 16, IPv6Address)):
            for k, v in bpfsys.items(self.fds[name], size, 16).items():
                ep, ident, flags, _ = struct.unpack("=IIII", v)
                out[cls(k)] = (ep, ident, flags)
        return out

    def write_lxc(self, addr: IPv4Address | IPv6Address, endpoint_id: int, identity: int, flags: int,
                  only_new: bool = False) -> bool:
        try:
            bpfsys.update(self.fds["lxc6" if addr.version == 6 else "lxc"], addr.packed,
                          struct.pack("=IIII", endpoint_id, identity, flags, 0),
                          bpfsys.NOEXIST if only_new else bpfsys.ANY)
        except bpfsys.BPFError as e:
            if only_new and e.errno == 17:  # EEXIST: keep what apply() wrote
                return False
            raise
        return True

    def delete_lxc(self, addr: IPv4Address | IPv6Address) -> None:
        bpfsys.delete(self.fds["lxc6" if addr.version == 6 else "lxc"], addr.packed)

    # -- which endpoint a veth belongs to (read by the shared program) ---------
    def read_ifindex(self) -> dict[int, tuple[int, IPv4Address]]:
        out: dict[int, tuple[int, IPv4Address]] = {}
        for k, v in bpfsys.items(self.fds["ifindex"], 4, 8).items():
            ep, addr = struct.unpack("=I4s", v)
            out[struct.unpack("=I", k)[0]] = (ep, IPv4Address(addr))
        return out

    def write_ifindex(self, ifindex: int, endpoint_id: int, addr: IPv4Address) -> None:
        bpfsys.update(self.fds["ifindex"], struct.pack("=I", ifindex), struct.pack("=I4s", endpoint_id, _ip4(addr)),
                      bpfsys.ANY)

    def delete_ifindex(self, ifindex: int, endpoint_id: int) -> None:
        """Delete the entry only if it is still this endpoint's (the index
        may have been reused by a newer veth since)."""
        if self.read_ifindex().get(ifindex, (None,))[0] == endpoint_id:
            bpfsys.delete(self.fds["ifindex"], struct.pack("=I", ifindex))

    # -- conntrack (for tests and `ciliate bpf ct list`) ----------------------
    def read_ct(self) -> dict[bytes, bytes]:
        """Raw entries of both tables; a key's length tells its family."""
        out = bpfsys.items(self.fds["ct"], ctypes.sizeof(layout.CtKey), ctypes.sizeof(layout.CtValue))
        out.update(bpfsys.items(self.fds["ct6"], ctypes.sizeof(layout.Ct6Key), ctypes.sizeof(layout.CtValue)))
        return out

    def flush_ct(self) -> int:
        n = 0
        for name, cls in (("ct", layout.CtKey), ("ct6", layout.Ct6Key)):
            for k in bpfsys.keys(self.fds[name], ctypes.sizeof(cls)):
                n += bpfsys.delete(self.fds[name], k)
        return n
