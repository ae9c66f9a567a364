"""A throw-away Docker engine for the compose test: its own dockerd, network
namespace, data root and base image, all removed by `close()`.

- dockerd runs inside a network namespace made here (entered with
  `nsenter --net=`, which keeps the host's /sys and its bpffs visible), with
  no bridge, iptables or forwarding: containers that share its namespace
  touch that namespace only.
- Its data and exec roots live under one temp directory, so /var/lib/docker
  stays untouched; every mount dockerd leaves there is unmounted at close.
- No registry is reachable here, so the Dockerfile's base image is made with
  `mmdebstrap --variant=minbase` and `docker import`ed under the tag its FROM
  names; the machine's pip configuration and CA bundle go into it so the
  build's `pip install` reaches the index the way this machine's pip does.
- A runtime wrapper drops CAP_SYS_RESOURCE, which no process here holds.
- Image builds need the host's network: `build_engine()` runs dockerd in the
  host namespace only while building (no containers run then), and the
  demo's engine runs in the private namespace on the same data root.
Does process, mount and namespace I/O; needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WRAPPER = HERE / "runc_without_sys_resource.py"
BUILD_CA = "/usr/local/share/ciliate-build/ca-bundle.pem"


class EngineUnavailable(Exception):
    """Docker cannot run on this machine at all (the reason says why)."""


def base_image_tag(dockerfile: Path = ROOT / "deploy" / "Dockerfile") -> str:
    m = re.search(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
    if not m:
        raise ValueError(f"{dockerfile}: no FROM line")
    return m.group(1)


def image_pip_conf(host_conf: Path, ca: str | None) -> str:
    """This machine's global pip configuration, with `cert` set to `ca`."""
    import configparser

    conf = configparser.ConfigParser()
    if host_conf.is_file():
        conf.read(host_conf)
    if ca:
        if not conf.has_section("global"):
            conf.add_section("global")
        conf.set("global", "cert", ca)
    lines = []
    for section in conf.sections():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in conf.items(section)]
    return "\n".join(lines) + "\n"


def missing_tools() -> list[str]:
    return [t for t in ("dockerd", "docker", "runc", "mmdebstrap", "docker-compose", "nsenter", "ip") if not shutil.which(t)]


class Engine:
    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise EngineUnavailable("needs root")
        if missing := missing_tools():
            raise EngineUnavailable(f"missing {', '.join(missing)} (scripts/install.sh installs them)")
        self.dir = Path(tempfile.mkdtemp(prefix="cildock-"))
        self.netns = f"cildock-{uuid.uuid4().hex[:8]}"
        self.socket = self.dir / "docker.sock"
        self.proc: subprocess.Popen | None = None
        self.images: list[str] = []
        self._netns_made = False
        (self.dir / "daemon.json").write_text(json.dumps({
            "runtimes": {"ciliate-runc": {"path": str(WRAPPER)}},
            "default-runtime": "ciliate-runc",
        }))

    @property
    def env(self) -> dict[str, str]:
        """Environment for docker / docker-compose clients of this engine."""
        return {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "CILIATE_DOCKER_SOCKET": str(self.socket),
            "DOCKER_BUILDKIT": "0",
            "COMPOSE_DOCKER_CLI_BUILD": "0",
        }

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode:
            raise RuntimeError(f"docker {' '.join(args)}: {out.stderr.strip()}")
        return out

    # -- dockerd

    def start(self, *, host_network: bool = False) -> None:
        self.stop()
        if not host_network and not self._netns_made:
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
            self._netns_made = True
            subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        prefix = [] if host_network else ["nsenter", f"--net=/run/netns/{self.netns}"]
        log = open(self.dir / "dockerd.log", "ab")
        self.proc = subprocess.Popen(
            [*prefix, "dockerd", "--config-file", str(self.dir / "daemon.json"),
             "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
             "--pidfile", str(self.dir / "dockerd.pid"), "--host", f"unix://{self.socket}",
             "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--ip-forward=false",
             "--storage-driver=overlay2"],
            stdout=log, stderr=log, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineUnavailable(f"dockerd exited {self.proc.returncode}: {self.log_tail()}")
            if self.socket.exists() and self.docker("info", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd not ready after 30s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.dir / "dockerd.log").read_text(errors="replace").splitlines()[-n:])
        return ""

    # -- the base image

    def import_base_image(self, tag: str | None = None) -> str:
        tag = tag or base_image_tag()
        tar = self.dir / "base.tar"
        # The CA bundle goes where no Debian package writes (installing
        # ca-certificates in the build would regenerate /etc/ssl/certs), and
        # the image's pip.conf is this machine's with `cert` pointing there.
        ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
        pip_conf = self.dir / "pip.conf"
        pip_conf.write_text(image_pip_conf(Path("/etc/pip.conf"), BUILD_CA if Path(ca).is_file() else None))
        hooks = [f'mkdir -p "$1{Path(BUILD_CA).parent}"', f'cp {pip_conf} "$1/etc/pip.conf"']
        if Path(ca).is_file():
            hooks.append(f'cp {ca} "$1{BUILD_CA}"')
        cmd = ["mmdebstrap", "--quiet", "--variant=minbase"]
        for hook in hooks:
            cmd += ["--customize-hook", hook]
        out = subprocess.run([*cmd, "bookworm", str(tar)], capture_output=True, text=True, timeout=300)
        if out.returncode:
            raise RuntimeError(f"mmdebstrap: {out.stderr.strip()[-2000:]}")
        self.images.append(tag)
        self.docker("import", str(tar), tag, timeout=300)
        tar.unlink()
        return tag

    # -- teardown

    def close(self) -> list[str]:
        """Stop everything and remove what was made; returns what could not be removed."""
        problems: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            for image in self.images:
                self.docker("rmi", "-f", image, check=False)
        self.stop()
        for pid in self._processes_using(self.dir):  # e.g. a containerd-shim dockerd did not stop
            problems.append(f"process {pid} outlived dockerd; killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mnt in sorted(self._mounts_below(self.dir), key=len, reverse=True):
            if subprocess.run(["umount", "-l", mnt], capture_output=True).returncode:
                problems.append(f"cannot unmount {mnt}")
        if self._netns_made:
            if subprocess.run(["ip", "netns", "del", self.netns], capture_output=True).returncode:
                problems.append(f"cannot delete netns {self.netns}")
            self._netns_made = False
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            problems.append(f"{self.dir} left behind")
        return problems

    @staticmethod
    def _processes_using(path: Path) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if str(path).encode() in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
        return pids

    @staticmethod
    def _mounts_below(path: Path) -> list[str]:
        out = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4].replace("\\040", " ")
            if target == str(path) or target.startswith(f"{path}/"):
                out.append(target)
        return out
