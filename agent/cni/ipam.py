"""Delegating IP address management to an IPAM plugin (e.g. host-local), per the CNI spec:
exec the plugin found on CNI_PATH with the same stdin and CNI_* environment.

Does process I/O.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from agent.cni.errors import IPAM_FAILED, INVALID_CONFIG, CniError

FALLBACK_PATHS = ("/opt/cni/bin", "/usr/lib/cni")
IPAM_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class IpamResult:
    address: IPv4Interface
    gateway: IPv4Address | None
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


def first_ipv4(result: Mapping[str, object]) -> IpamResult:
    for ip in result.get("ips", []) or []:  # type: ignore[union-attr]
        try:
            addr = IPv4Interface(ip["address"])
        except (KeyError, ValueError, TypeError):
            continue
        gw = IPv4Address(ip["gateway"]) if ip.get("gateway") else None
        return IpamResult(addr, gw, result)
    raise CniError(IPAM_FAILED, "IPAM plugin returned no IPv4 address", json.dumps(result)[:500])
