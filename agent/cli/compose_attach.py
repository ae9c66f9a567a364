"""Attaches the docker-compose demo's app containers to ciliate through ciliate-cni.

Docker does not speak CNI, so the app containers start with
`network_mode: none` and say who they are in their environment
(CILIATE_APP, CILIATE_IP, CILIATE_IP6, CILIATE_LABELS="k=v,k=v"). This one-shot service
asks the Docker API (its socket mounted at /var/run/docker.sock) for the
running containers of its own compose project (the
`com.docker.compose.project` label of the container it runs in), so it
adopts only the demo's apps, never another process that happens to have
CILIATE_APP in its environment. For each one it runs the CNI ADD for the
app's network namespace (/proc/PID/ns/net, hence `pid: host`) with static
IPAM, so every app gets the address the README's curl commands use.
Idempotent: ADD replaces. Does Docker API and /proc I/O, and runs the CNI
plugin in-process.
"""

from __future__ import annotations

import json
import os
import socket as socketlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from sidecar.unix_get import unix_get
from agent.cni.plugin import run as cni_run

GATEWAY = "10.200.0.1"
PREFIX = 24
GATEWAY6 = "fd00:10:200::1"  # the node's IPv6 toward the apps (on ciliate_host)
PREFIX6 = 64


@dataclass(frozen=True, slots=True)
class App:
    name: str
    pid: int
    ip: str
    labels: dict[str, str]
    ip6: str = ""  # "" for an IPv4-only app


def parse_labels(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"CILIATE_LABELS: {part!r} is not key=value")
        out[key] = value
    return out


PROJECT_LABEL = "com.docker.compose.project"


class DockerApi(Protocol):
    def get(self, path: str) -> Any: ...


class UnixDockerApi:
    """GET requests to the Docker engine's API over its unix socket."""

    def __init__(self, path: str = "/var/run/docker.sock") -> None:
        self.path = path

    def get(self, path: str) -> Any:
        status, body = unix_get(self.path, path, 10, host="docker")
        if status != 200:
            raise OSError(f"Docker API GET {path}: {status} {body[:200]!r}")
        return json.loads(body)


def own_project(api: DockerApi, container_id: str) -> str:
    """The compose project of the container this process runs in."""
    labels = api.get(f"/containers/{quote(container_id)}/json")["Config"].get("Labels") or {}
    if PROJECT_LABEL not in labels:
        raise ValueError(f"container {container_id} has no {PROJECT_LABEL} label: not started by compose")
    return labels[PROJECT_LABEL]


def find_apps(api: DockerApi, project: str) -> Iterator[App]:
    """The running containers of `project` that name a CILIATE_APP."""
    filters = quote(json.dumps({"label": [f"{PROJECT_LABEL}={project}"], "status": ["running"]}))
    for summary in api.get(f"/containers/json?filters={filters}"):
        if (summary.get("Labels") or {}).get(PROJECT_LABEL) != project:
            continue  # the engine filters already; an old engine might not
        info = api.get(f"/containers/{quote(summary['Id'])}/json")
        env = dict(kv.split("=", 1) for kv in info["Config"].get("Env") or [] if "=" in kv)
        pid = int(info["State"].get("Pid") or 0)
        if "CILIATE_APP" not in env or pid <= 0:
            continue
        yield App(env["CILIATE_APP"], pid, env.get("CILIATE_IP", ""), parse_labels(env.get("CILIATE_LABELS", "")),
                  env.get("CILIATE_IP6", ""))


def netconf(app: App, socket: str) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "ciliate-compose",
        "type": "ciliate-cni",
        "agentSocket": socket,
        "ipam": {"type": "static", "addresses": [{"address": f"{app.ip}/{PREFIX}", "gateway": GATEWAY}] + (
            [{"address": f"{app.ip6}/{PREFIX6}", "gateway": GATEWAY6}] if app.ip6 else []
        )},
        "args": {"cni": {"labels": [{"key": k, "value": v} for k, v in sorted(app.labels.items())]}},
    }


def attach(app: App, socket: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": f"compose-{app.name}",
        "CNI_NETNS": f"/proc/{app.pid}/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": os.environ.get("CNI_PATH", "/usr/lib/cni"),
    }
    return cni_run(json.dumps(netconf(app, socket)).encode(), env)


def main() -> int:
    expect = set(filter(None, os.environ.get("CILIATE_EXPECT", "").split(",")))
    socket = os.environ.get("CILIATE_SOCKET", "/var/run/ciliate/agent.sock")
    api = UnixDockerApi(os.environ.get("CILIATE_DOCKER_API", "/var/run/docker.sock"))
    deadline = time.monotonic() + float(os.environ.get("CILIATE_ATTACH_TIMEOUT", "120"))
    # Docker names a container's host after the first 12 hex digits of its id.
    project = own_project(api, os.environ.get("HOSTNAME") or socketlib.gethostname())
    print(f"compose project {project!r}: attaching {sorted(expect)}", flush=True)
    done: set[str] = set()
    while time.monotonic() < deadline:
        for app in find_apps(api, project):
            if app.name in done:
                continue
            code, out = attach(app, socket)
            if code == 0:
                done.add(app.name)
                print(f"attached {app.name} ({app.ip}, {app.labels})", flush=True)
            else:
                print(f"attaching {app.name} failed, will retry: {out}", file=sys.stderr, flush=True)
        if expect and expect <= done:
            return 0
        time.sleep(1.0)
    print(f"gave up: attached {sorted(done)}, expected {sorted(expect)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
