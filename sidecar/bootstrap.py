"""Renders the sidecar Envoy's bootstrap from envoy/bootstrap.yaml, writes it
privately and reads back the admin socket of one written earlier. File I/O
only (the template, the bootstrap file).

Endpoints are given either as a unix socket path or a loopback (host, port);
the xDS server and access log server listen on the matching transport.
Envoy's admin API is only ever a unix socket of mode 0600 (see
envoy/bootstrap.yaml for why).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from sidecar.errors import EnvoyError
from xds.limits import ProxyLimits
from xds.loopback import require_loopback

TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "bootstrap.yaml"
ACCESSLOG_CLUSTER = "ciliate-accesslog"

Endpoint = str | tuple[str, int]
UNIX_PATH_MAX = 108  # sun_path, NUL included


def address(ep: Endpoint) -> dict[str, Any]:
    if isinstance(ep, str):
        return {"pipe": {"path": ep}}
    host, port = ep
    require_loopback(host, "sidecar endpoints", EnvoyError)
    return {"socket_address": {"address": host, "port_value": int(port)}}


@dataclass(frozen=True)
class BootstrapParams:
    node_id: str
    xds: Endpoint
    admin_socket: str = ""  # absolute path of the admin API's unix socket (mode 0600)
    accesslog: Endpoint | None = None
    delta: bool = False  # DELTA_GRPC (incremental) instead of GRPC (state of the world)
    limits: ProxyLimits = ProxyLimits()  # the overload manager's share: heap and connections in all


def render_bootstrap(p: BootstrapParams, template: Path = TEMPLATE) -> dict[str, Any]:
    if not p.node_id:
        raise EnvoyError("bootstrap: node_id must not be empty")
    _check_admin_socket(p.admin_socket)
    text = Template(template.read_text()).substitute(
        node_id=json.dumps(p.node_id),
        admin_socket=json.dumps(p.admin_socket),
        ads_api_type="DELTA_GRPC" if p.delta else "GRPC",
        xds_address=json.dumps(address(p.xds)),
        accesslog_address=json.dumps(address(p.accesslog)) if p.accesslog is not None else "{}",
        max_heap_bytes=int(p.limits.heap_bytes),
        max_connections=int(p.limits.connections_total),
    )
    doc = yaml.safe_load(text)
    if p.accesslog is None:
        clusters = doc["static_resources"]["clusters"]
        doc["static_resources"]["clusters"] = [c for c in clusters if c["name"] != ACCESSLOG_CLUSTER]
    return doc


def _check_admin_socket(path: object) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        raise EnvoyError(f"bootstrap: admin_socket must be an absolute unix socket path, not {path!r}")
    # Absolute, so never abstract ('@...'): an abstract socket has no file mode,
    # every local user in the network namespace could open it.
    if len(os.fsencode(path)) >= UNIX_PATH_MAX:
        raise EnvoyError(f"bootstrap: admin_socket {path!r} is longer than a unix socket path may be ({UNIX_PATH_MAX - 1} bytes)")


def admin_section(socket_path: str) -> dict[str, Any]:
    """The bootstrap's `admin` block: the given unix socket, root only."""
    _check_admin_socket(socket_path)
    return {"address": {"pipe": {"path": socket_path, "mode": 0o600}}}


def write_private(path: Path, doc: dict[str, Any]) -> Path:
    """Write a bootstrap as JSON readable by root only (it names the sockets),
    atomically: a leftover Envoy may be started from the previous one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a stale temporary file keeps its old mode otherwise
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=1))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def write_bootstrap(p: BootstrapParams, path: Path) -> Path:
    return write_private(path, render_bootstrap(p))


def read_admin_socket(bootstrap: Path) -> str | None:
    """The admin socket named by a bootstrap file written earlier, or None when
    the file is missing, unreadable, or has no unix-socket admin (an older
    install's TCP admin is not used)."""
    try:
        doc = json.loads(bootstrap.read_bytes())
        path = doc["admin"]["address"]["pipe"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if isinstance(path, str) and path.startswith("/") else None
