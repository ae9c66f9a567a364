"""An invalid policy file dropped into the watched directory of a running
node: `ciliate policy get -o json` shows the error with the file, the field
and the reason; everything already in force stays enforced (real requests
prove it); fixing the file clears the error."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.node import Node
from tests.reliability.conftest import LAND, POLICIES, STARWARS, Starwars, build_starwars, wait_for

L3L4 = (STARWARS / "1-l3l4.yaml").read_text()
NOBODY = (POLICIES / "nobody.yaml").read_text()


@pytest.fixture(scope="module")
def sw() -> Iterator[Starwars]:
    # One node for every case: each case restores the directory it found.
    with Node(prefix="cilrelp", subnet="10.206.0.0/24") as n:
        yield build_starwars(n, STARWARS / "1-l3l4.yaml")


def write(node: Node, name: str, text: str) -> None:
    tmp = node.policies / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, node.policies / name)


def statuses(node: Node, file_name: str) -> list[dict]:
    return [p for p in node.ciliate_json("policy", "get")["policies"] if Path(p["source"]).name == file_name]


def observed(sw: Starwars, ship: str) -> str:
    got = sw.node.request(ship, LAND[0], sw.dst(), LAND[1], timeout=1.0)
    return str(got["status"]) if "status" in got else got.get("error", "?")


@pytest.mark.privileged
@pytest.mark.envoy
@pytest.mark.parametrize(
    "file_name, broken, fixed, must_mention, stale",
    [
        pytest.param(
            "extra.yaml", NOBODY.replace("app: nobody\n  ingress", "app: nobody\n  ingres"), NOBODY,
            ("spec.ingres", "unknown field"), False, id="new-file-unknown-field",
        ),
        pytest.param(
            "extra.yaml", L3L4.replace('port: "80"', 'port: "99999"').replace("rule1", "rule2"), NOBODY,
            ("spec.ingress[0].toPorts[0].ports[0].port", "99999"), False, id="new-file-port-out-of-range",
        ),
        pytest.param(
            "extra.yaml", NOBODY.replace("name: \"extra\"", "name: [extra"), NOBODY,
            ("invalid YAML", "line"), False, id="new-file-yaml-syntax",
        ),
        pytest.param(
            "starwars.yaml", L3L4.replace("fromEndpoints", "fromEndpointz"), L3L4,
            ("spec.ingress[0].fromEndpointz", "unknown field"), True, id="enforced-policy-broken-in-place",
        ),
    ],
)
def test_invalid_policy_reports_error_and_keeps_enforcing(
    sw: Starwars, file_name: str, broken: str, fixed: str, must_mention: tuple[str, ...], stale: bool
) -> None:
    node = sw.node
    assert (observed(sw, "tiefighter"), observed(sw, "xwing")) == ("200", "timeout")
    try:
        write(node, file_name, broken)
        errs = wait_for(f"{file_name} in error", lambda: [p for p in statuses(node, file_name) if p["state"] == "error"], timeout=15)
        shown = "\n".join(f"{p['source']}: {e['kind']}: {e['message']}" for p in errs for e in p["errors"])
        for fragment in (file_name, *must_mention):
            assert fragment in shown, f"{fragment!r} missing from the status:\n{shown}"
        assert all(e["kind"] == "validation" for p in errs for e in p["errors"]), shown
        assert [p["stale"] for p in errs] == [stale] * len(errs), errs  # stale: the previous version still enforced
        # Everything in force before still is, in the kernel and in the status.
        assert (observed(sw, "tiefighter"), observed(sw, "xwing")) == ("200", "timeout"), shown
        rule1 = [p for p in node.ciliate_json("policy", "get")["policies"] if p["name"].endswith("rule1")]
        assert [p["endpoints"] for p in rule1] == [1], rule1

        write(node, file_name, fixed)
        wait_for(
            f"{file_name} fixed",
            lambda: (st := statuses(node, file_name)) and all(p["state"] == "enforced" and not p["errors"] for p in st),
            timeout=15,
        )
        assert not [p for p in node.ciliate_json("policy", "get")["policies"] if p["state"] == "error"]
        assert (observed(sw, "tiefighter"), observed(sw, "xwing")) == ("200", "timeout")
    finally:
        if file_name == "starwars.yaml":
            write(node, file_name, L3L4)
        else:
            (node.policies / file_name).unlink(missing_ok=True)
