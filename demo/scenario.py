"""The star-wars scenario as data: pods, stages, requests and what each
request must observe, and where the stages' policy files are. Pure: the
runners (demo/run.py, cluster_run.py, k8s_run.py, compose_run.py, all
through demo/stages.py) do the I/O."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEATHSTAR_PORT = 80
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "starwars"  # the stages' policy files
POLICY_FILE = "starwars.yaml"  # one file, replaced per stage, so no stage ever runs without policy


@dataclass(frozen=True)
class Pod:
    name: str
    labels: dict[str, str]


@dataclass(frozen=True)
class Request:
    ship: str
    method: str
    path: str
    expect: str  # "200", "403" or "dropped"
    family: int = 4  # 6: to the deathstar's IPv6 address


@dataclass(frozen=True)
class Stage:
    title: str
    policy_files: tuple[str, ...]  # under examples/starwars/; each stage replaces the previous one's
    requests: tuple[Request, ...]


PODS = (
    Pod("deathstar", {"org": "empire", "class": "deathstar"}),
    Pod("tiefighter", {"org": "empire", "class": "tiefighter"}),
    Pod("xwing", {"org": "alliance", "class": "xwing"}),
)

LAND = ("POST", "/v1/request-landing")
EXHAUST = ("PUT", "/v1/exhaust-port")

STAGES = (
    Stage(
        "no policy: every request lands",
        (),
        (
            Request("tiefighter", *LAND, "200"),
            Request("xwing", *LAND, "200"),
            Request("tiefighter", *EXHAUST, "200"),
        ),
    ),
    Stage(
        "L3/L4 policy: only the empire may reach the deathstar on TCP/80",
        ("1-l3l4.yaml",),
        (
            Request("tiefighter", *LAND, "200"),
            Request("xwing", *LAND, "dropped"),
            Request("tiefighter", *EXHAUST, "200"),
        ),
    ),
    Stage(
        "L3/L4/L7 policy: the empire may only request landing",
        ("2-l7.yaml",),
        (
            Request("tiefighter", *LAND, "200"),
            Request("xwing", *LAND, "dropped"),
            Request("tiefighter", *EXHAUST, "403"),
        ),
    ),
)


# Dual-stack nodes only (`ciliate demo`): the policy of the last stage, left in
# force, over IPv6. One policy covers both addresses of a pod (identities, not
# addresses), so nothing is applied: the kernel drops the xwing's SYN, Envoy
# answers 403, and the deathstar sees the tiefighter's own IPv6 address.
IPV6_STAGE = Stage(
    "the same L3/L4/L7 policy over IPv6",
    (),
    (
        Request("tiefighter", *LAND, "200", family=6),
        Request("xwing", *LAND, "dropped", family=6),
        Request("tiefighter", *EXHAUST, "403", family=6),
    ),
)


def observed_label(outcome: dict[str, object]) -> str:
    """Turn one client outcome into the vocabulary of `Request.expect`."""
    if "status" in outcome:
        return str(outcome["status"])
    if outcome.get("error") == "timeout":
        return "dropped"
    return f"error: {outcome.get('error')}"


# `ciliate demo --k8s` ends by deleting the policy object: the API path must
# withdraw what it enforced, not only add to it.
POLICY_DELETED = Stage(
    "policy deleted: every request lands again",
    (),
    (
        Request("xwing", *LAND, "200"),
        Request("tiefighter", *EXHAUST, "200"),
    ),
)

K8S_STAGES = (*STAGES, POLICY_DELETED)
