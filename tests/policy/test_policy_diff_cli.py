"""`ciliate policy diff` on the command line: text, JSON, bad input, and the
agent-backed forms against a fake client."""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from agent.cli import ciliate as cli
from agent.cli import policy_diff
from agent.core.flow_history import FlowHistoryList
from agent.core.models import Endpoint as ApiEndpoint, FlowEvent

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = str(ROOT / "examples/starwars/1-l3l4.yaml"), str(ROOT / "examples/starwars/2-l7.yaml")


@pytest.fixture
def endpoints_file(tmp_path: Path) -> str:
    p = tmp_path / "eps.yaml"
    p.write_text("- labels: {org: empire, class: deathstar}\n- labels: {org: empire, class: tiefighter}\n"
                 "- labels: {org: alliance, class: xwing}\n")
    return str(p)


def test_text_output_is_what_the_readme_shows(capsys):
    rc = cli.main(["policy", "diff", "--old", OLD, "--new", NEW, "--endpoints", str(ROOT / "docs/starwars-endpoints.yaml")])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.strip() in (ROOT / "README.md").read_text()
    assert out.splitlines()[0] == ("2 flows change verdict between 2 source/destination pairs: 2 become denied, "
                                   "0 become allowed (3 endpoints, 3 identities)")
    assert out.count("80/TCP         HTTP allowed -> denied: any request other than POST /v1/request-landing  e.g. GET /") == 2
    assert "xwing" not in out


def test_json_output_and_exit_zero_when_nothing_changes(endpoints_file, capsys):
    assert cli.main(["policy", "diff", "--old", NEW, "--new", NEW, "--endpoints", endpoints_file, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["changes"] == 0
    assert cli.main(["policy", "diff", "--old", OLD, "--new", NEW, "--endpoints", endpoints_file, "-o", "json"]) == 1
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert {g["src"]["name"] for g in groups} == {"class=tiefighter,org=empire", "class=deathstar,org=empire"}


def test_bad_endpoints_file_names_file_entry_and_field(tmp_path, capsys):
    p = tmp_path / "eps.yaml"
    p.write_text("- labels: {app: web}\n- labelz: {app: api}\n")
    assert cli.main(["policy", "diff", "--old", OLD, "--new", NEW, "--endpoints", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}: [1]" in err and "labelz" in err


def test_offline_endpoints_get_distinct_deterministic_addresses(tmp_path):
    p = tmp_path / "eps.yaml"
    p.write_text("- labels: {app: a}\n- labels: {app: b}\n  ipv4: 100.64.0.2\n- labels: {app: c}\n")
    assert [str(e.ipv4) for e in policy_diff.load_endpoints(str(p))] == ["100.64.0.1", "100.64.0.2", "100.64.0.3"]


class _FakeClient:
    def __init__(self, *_a, **_k) -> None:
        pass

    def __enter__(self) -> "_FakeClient":
        return self

    def __exit__(self, *_exc) -> None:
        pass

    def endpoints(self) -> list[ApiEndpoint]:
        return [ApiEndpoint(id=i, host_ifname=f"lxc{i}", container_id=f"c{i}", state="ready", labels=labels,
                            ipv4=IPv4Address(f"10.200.0.{i}"))
                for i, labels in ((1, {"org": "empire", "class": "deathstar"}), (2, {"org": "empire", "class": "tiefighter"}))]

    def flow_history(self, since=None) -> FlowHistoryList:
        ev = FlowEvent(time=5.0, type="l7", protocol="HTTP", src_ip="10.200.0.2", dst_ip="10.200.0.1", dst_port=80,
                       method="PUT", path="/v1/exhaust-port", status=200, verdict="forwarded")
        return FlowHistoryList(events=[ev] * 3, capacity=10_000, max_age=3600, evicted=0)


def test_agent_endpoints_and_observed_replay(monkeypatch, capsys):
    monkeypatch.setattr(policy_diff, "_agent_client", _FakeClient)
    assert cli.main(["policy", "diff", "--old", OLD, "--new", NEW]) == 1
    assert "class=tiefighter,org=empire -> class=deathstar,org=empire" in capsys.readouterr().out
    assert cli.main(["policy", "diff", "--observed", "--new", NEW]) == 1
    out = capsys.readouterr().out
    assert ("your new policy would have dropped 3 requests from class=tiefighter,org=empire to "
            "class=deathstar,org=empire:80/TCP (e.g. PUT /v1/exhaust-port)") in out


def test_no_agent_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["policy", "diff", "--old", OLD, "--new", NEW, "--socket", str(tmp_path / "none.sock")])
    assert rc == 2 and "is `ciliate agent` running?" in capsys.readouterr().err
