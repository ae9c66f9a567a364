"""Delegating IP address management to an IPAM plugin (e.g. host-local), per the CNI spec:
exec the plugin found on CNI_PATH with the same stdin and CNI_* environment;
and reading its result: the pod's address of each family.

host-local hands out one address per range set (`ranges: [[IPv4 range],
[IPv6 range]]` gives both). The first address of each family is the pod's;
an IPv4-only result is read exactly as before dual-stack. Process I/O in
exec_ipam; the rest is pure.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_address, ip_interface
from pathlib import Path

from agent.cni.errors import IPAM_FAILED, INVALID_CONFIG, CniError

FALLBACK_PATHS = ("/opt/cni/bin", "/usr/lib/cni")
IPAM_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class IpamAddress:
    """One address the IPAM plugin gave, with the prefix of its range and its gateway."""

    interface: IPv4Interface | IPv6Interface
    gateway: IPv4Address | IPv6Address | None


@dataclass(frozen=True, slots=True)
class IpamResult:
    ipv4: IpamAddress | None
    ipv6: IpamAddress | None
    raw: Mapping[str, object]


def find_plugin(name: str, search: tuple[str, ...]) -> Path:
    if "/" in name:
        raise CniError(INVALID_CONFIG, f"ipam.type {name!r} must be a plugin name, not a path")
    for d in (*search, *FALLBACK_PATHS):
        cand = Path(d) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    raise CniError(INVALID_CONFIG, f"IPAM plugin {name!r} not found in CNI_PATH ({':'.join(search) or 'unset'}) or {', '.join(FALLBACK_PATHS)}")


def exec_ipam(command: str, stdin: bytes, plugin: str, env: Mapping[str, str], search: tuple[str, ...]) -> dict:
    path = find_plugin(plugin, search)
    child_env = dict(env)
    child_env["CNI_COMMAND"] = command
    try:
        proc = subprocess.run([str(path)], input=stdin, env=child_env, capture_output=True, timeout=IPAM_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise CniError(IPAM_FAILED, f"IPAM plugin {plugin} {command} did not answer in {IPAM_TIMEOUT:.0f}s") from exc
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        try:
            err = json.loads(out)
            msg = f"IPAM plugin {plugin} {command} failed: {err.get('msg', out)}"
            details = err.get("details", "")
        except ValueError:
            msg, details = f"IPAM plugin {plugin} {command} failed (exit {proc.returncode})", out or proc.stderr.decode(errors="replace")
        raise CniError(IPAM_FAILED, msg, details)
    if command != "ADD":
        return {}
    try:
        return json.loads(out)
    except ValueError as exc:
        raise CniError(IPAM_FAILED, f"IPAM plugin {plugin} returned something that is not JSON", out[:500]) from exc


def _address(entry: object) -> IpamAddress | None:
    """An `ips` entry; None for one that holds no address (skipped, as before)."""
    if not isinstance(entry, Mapping):
        return None
    try:
        iface = ip_interface(entry["address"])
    except (KeyError, ValueError, TypeError):
        return None
    raw_gw = entry.get("gateway")
    if not raw_gw:
        return IpamAddress(iface, None)
    try:
        gw = ip_address(raw_gw)
    except (ValueError, TypeError):
        gw = None
    if gw is None or gw.version != iface.version:
        raise CniError(IPAM_FAILED, f"IPAM plugin gave {iface} the gateway {raw_gw!r}, which is not an IPv{iface.version} address")
    return IpamAddress(iface, gw)


def pod_addresses(result: Mapping[str, object], what: str = "IPAM plugin") -> IpamResult:
    """The first address of each family in a CNI result's `ips` (an IPAM
    plugin's answer, or CHECK's prevResult); at least one is needed."""
    found: dict[int, IpamAddress] = {}
    entries = result.get("ips")
    for entry in entries if isinstance(entries, list) else []:
        addr = _address(entry)
        if addr is not None:
            found.setdefault(addr.interface.version, addr)
    if not found:
        raise CniError(IPAM_FAILED, f"{what} returned no IPv4 or IPv6 address", json.dumps(result)[:500])
    return IpamResult(found.get(4), found.get(6), result)
