"""Attaches the docker-compose demo's app containers to ciliate through ciliate-cni.

Docker does not speak CNI, so the app containers start with
`network_mode: none` and say who they are in their environment
(CILIATE_APP, CILIATE_IP, CILIATE_LABELS="k=v,k=v"). This one-shot service
(pid namespace of the host) finds each app's process in /proc, and runs the
CNI ADD for its network namespace (/proc/PID/ns/net) with static IPAM, so
every app gets the address the README's curl commands use. Idempotent: an
app whose namespace already has the interface is re-added (ADD replaces).
Does /proc reads and runs the CNI plugin in-process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.cni.plugin import run as cni_run

GATEWAY = "10.200.0.1"
PREFIX = 24


@dataclass(frozen=True, slots=True)
class App:
    name: str
    pid: int
    ip: str
    labels: dict[str, str]


def parse_labels(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"CILIATE_LABELS: {part!r} is not key=value")
        out[key] = value
    return out


def find_apps(proc: Path = Path("/proc")) -> Iterator[App]:
    seen_netns: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
            netns_ino = os.stat(entry / "ns" / "net").st_ino
        except OSError:
            continue
        env = dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
        if "CILIATE_APP" not in env or netns_ino in seen_netns:
            continue
        seen_netns.add(netns_ino)
        yield App(env["CILIATE_APP"], int(entry.name), env.get("CILIATE_IP", ""), parse_labels(env.get("CILIATE_LABELS", "")))


def netconf(app: App, socket: str) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "ciliate-compose",
        "type": "ciliate-cni",
        "agentSocket": socket,
        "ipam": {"type": "static", "addresses": [{"address": f"{app.ip}/{PREFIX}", "gateway": GATEWAY}]},
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
    deadline = time.monotonic() + float(os.environ.get("CILIATE_ATTACH_TIMEOUT", "120"))
    done: set[str] = set()
    while time.monotonic() < deadline:
        for app in find_apps():
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
