"""`make compose-demo`: the star-wars demo on Docker (docker-compose.yml).

Brings the compose project up (`up -d --build`), waits until the attach step
has joined the three apps, then goes through the stages of demo/scenario.py
with `exec` into the ships, printing the same request / expected / observed
table as `ciliate demo` (demo/table.py). Policies are applied the way the
README tells a user to: a file in deploy/policies/, which the agent watches.
Always tears the project down (`down -v`) and removes the policy file it
wrote; exits 1 on a mismatch, 2 when the demo could not run.

    python -m demo.compose_run [--compose "docker compose"] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from demo.scenario import EXAMPLES, IPV6_STAGE, POLICY_FILE, STAGES, Request, Stage
from demo.stages import run_stages
from demo.table import print_table

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "deploy" / "policies"
DEATHSTAR = "10.200.0.10"
DEATHSTAR6 = "[fd00:10:200::10]"  # docker-compose.yml's CILIATE_IP6
APPS = ("deathstar", "tiefighter", "xwing")


class ComposeError(Exception):
    pass


def default_compose() -> list[str]:
    """`docker compose` (v2) where it works, else Debian's `docker-compose`."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ComposeError("neither `docker compose` nor `docker-compose` is installed")


class Project:
    def __init__(self, compose: Sequence[str], out: TextIO) -> None:
        self.compose = [*compose, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml")]
        self.out = out

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        try:
            out = subprocess.run([*self.compose, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ComposeError(f"`{' '.join(args)}` took over {timeout:.0f}s") from exc
        if check and out.returncode:
            raise ComposeError(f"`{shlex.join(args)}` exited {out.returncode}: {(out.stderr or out.stdout).strip()[-1500:]}")
        return out

    def exec(self, service: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.run("exec", "-T", service, *cmd, timeout=timeout, check=False)

    def up(self) -> None:
        print("docker compose up -d --build (agent, envoy, deathstar, tiefighter, xwing, attach)...", file=self.out, flush=True)
        self.run("up", "-d", "--build", timeout=900)

    def wait_attached(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        logs = ""
        while time.monotonic() < deadline:
            logs = self.run("logs", "--no-color", "attach", check=False).stdout
            if all(f"attached {app} " in logs for app in APPS):
                for app_line in (ln for ln in logs.splitlines() if "attached " in ln):
                    print("  " + app_line.split("|", 1)[-1].strip(), file=self.out, flush=True)
                return
            if "gave up" in logs:
                break
            time.sleep(1)
        # Mostly the agent is why: say what it said, not only the attach step.
        agent = self.run("logs", "--no-color", "--tail", "40", "agent", check=False).stdout
        raise ComposeError(f"the apps were not attached: {logs.strip()[-1500:]}\n--- agent log (tail)\n{agent.strip()[-3000:]}")

    def policy_state(self) -> dict:
        out = self.exec("agent", "ciliate", "policy", "get", "-o", "json")
        if out.returncode:
            raise ComposeError(f"ciliate policy get: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def apply_policy(self, example: str, timeout: float = 60) -> None:
        before = int(self.policy_state()["revision"])
        tmp = POLICIES / f".{POLICY_FILE}.tmp"
        shutil.copyfile(EXAMPLES / example, tmp)
        os.replace(tmp, POLICIES / POLICY_FILE)
        deadline = time.monotonic() + timeout
        mine: list = []
        while time.monotonic() < deadline:
            state = self.policy_state()
            mine = [p for p in state["policies"] if p["source"].endswith("/" + POLICY_FILE)]
            if mine and all(p["state"] == "enforced" and p["revision"] > before for p in mine):
                return
            if any(p["state"] == "error" for p in mine):
                raise ComposeError(f"{example} was rejected: {mine}")
            time.sleep(0.3)
        raise ComposeError(f"{example} not enforced after {timeout:.0f}s: {mine}")

    def request(self, ship: str, method: str, path: str, family: int = 4) -> dict:
        host = DEATHSTAR6 if family == 6 else DEATHSTAR
        out = self.exec(ship, "python", "-m", "demo.apps", "request", method, f"http://{host}{path}", "--timeout", "3")
        try:
            return json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {"error": "client-failed", "detail": (out.stderr or out.stdout).strip()[-300:]}

    def down(self) -> None:
        print("\ndocker compose down -v", file=self.out, flush=True)
        self.run("down", "-v", "--remove-orphans", timeout=180, check=False)


def engine_problem(env: dict[str, str] | None = None) -> str | None:
    """Why no Docker engine answers where compose will look (DOCKER_HOST, else
    the default socket), or None when one does. Asked before `up`, because
    compose 1.29 answers a missing engine with a Python traceback."""
    host = (env if env is not None else os.environ).get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    how = "start it (`systemctl start docker`, or `dockerd &` as root), or point DOCKER_HOST at a running engine"
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX)
            target: str | tuple[str, int] = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            hostport = host.removeprefix("tcp://").rstrip("/")
            name, _, port = hostport.rpartition(":")
            sock, target = socket.socket(), (name.strip("[]"), int(port or 2375))
        else:
            return None  # ssh:// and the like: compose reaches those its own way
        with sock:
            sock.settimeout(5)
            sock.connect(target)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
    except (OSError, ValueError) as exc:
        return f"no Docker engine answers at {host} ({exc.strerror or exc}); {how}"
    if not reply.startswith(b"HTTP/1.") or b" 200 " not in reply.split(b"\r\n")[0] + b" ":
        return f"{host} answered, but not as a Docker engine ({reply[:40]!r}); {how}"
    return None


def remove_policy_file() -> None:
    for name in (POLICY_FILE, f".{POLICY_FILE}.tmp"):
        (POLICIES / name).unlink(missing_ok=True)


def run(compose: Sequence[str] | None = None, out: TextIO = sys.stdout, keep: bool = False) -> int:
    try:
        project = Project(compose or default_compose(), out)
    except ComposeError as exc:
        print(f"compose demo failed: {exc}", file=out)
        return 2
    if (problem := engine_problem()) is not None:
        print(f"compose demo cannot run: {problem}", file=out)
        return 2
    remove_policy_file()  # every run starts without policy, whatever an earlier one left
    try:
        project.up()
        project.wait_attached()

        def apply(stage: Stage) -> None:
            for f in stage.policy_files:
                project.apply_policy(f)
                print(f"  cp examples/starwars/{f} deploy/policies/{POLICY_FILE}", file=out, flush=True)

        def send(req: Request) -> dict[str, object]:
            return project.request(req.ship, req.method, req.path, req.family)

        rows = run_stages(STAGES + (IPV6_STAGE,), out, apply, send)
    except ComposeError as exc:
        print(f"compose demo failed: {exc}", file=out)
        return 2
    finally:
        remove_policy_file()
        if not keep:
            project.down()
    return 1 if print_table(rows, out) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.compose_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--compose", help='the compose command, e.g. "docker-compose" (default: docker compose v2 if present)')
    parser.add_argument("--keep", action="store_true", help="leave the project running afterwards")
    args = parser.parse_args(argv)
    return run(shlex.split(args.compose) if args.compose else None, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
