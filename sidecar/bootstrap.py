"""Renders the sidecar Envoy's bootstrap from envoy/bootstrap.yaml. Pure apart
from reading the template file.

Endpoints are given either as a unix socket path or a loopback (host, port);
the xDS server and access log server listen on the matching transport.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from xds.errors import EnvoyError

TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "bootstrap.yaml"
ACCESSLOG_CLUSTER = "ciliate-accesslog"

Endpoint = str | tuple[str, int]


def address(ep: Endpoint) -> dict[str, Any]:
    if isinstance(ep, str):
        return {"pipe": {"path": ep}}
    host, port = ep
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise EnvoyError(f"sidecar endpoints must be on loopback, not {host!r}")
    return {"socket_address": {"address": host, "port_value": int(port)}}


@dataclass(frozen=True)
class BootstrapParams:
    node_id: str
    xds: Endpoint
    admin_port: int = 0  # 0: Envoy picks one; read it back from --admin-address-path
    accesslog: Endpoint | None = None
    delta: bool = False  # DELTA_GRPC (incremental) instead of GRPC (state of the world)


def render_bootstrap(p: BootstrapParams, template: Path = TEMPLATE) -> dict[str, Any]:
    if not p.node_id:
        raise EnvoyError("bootstrap: node_id must not be empty")
    text = Template(template.read_text()).substitute(
        node_id=json.dumps(p.node_id),
        admin_port=int(p.admin_port),
        ads_api_type="DELTA_GRPC" if p.delta else "GRPC",
        xds_address=json.dumps(address(p.xds)),
        accesslog_address=json.dumps(address(p.accesslog)) if p.accesslog is not None else "{}",
    )
    doc = yaml.safe_load(text)
    if p.accesslog is None:
        clusters = doc["static_resources"]["clusters"]
        doc["static_resources"]["clusters"] = [c for c in clusters if c["name"] != ACCESSLOG_CLUSTER]
    return doc


def write_bootstrap(p: BootstrapParams, path: Path) -> Path:
    path.write_text(json.dumps(render_bootstrap(p), indent=1))
    return path
