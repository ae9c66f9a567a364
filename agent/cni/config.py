"""Parsing what a CNI runtime hands the plugin: network config on stdin, CNI_* env.

Also derives the endpoint's labels (`args.cni.labels`, else the pod's
namespace and name from CNI_ARGS) and the host-side interface name. Pure: the
caller passes the stdin bytes and the environment mapping.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.cni.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENV, CniError

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"


class _Label(BaseModel):
    model_config = ConfigDict(extra="ignore")
    key: str = Field(min_length=1)
    value: str


class _NamedPort(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)
    port: int
    protocol: str = "TCP"


class _CniArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    labels: list[_Label] = Field(default_factory=list)
    # The ports the container serves by name (`port: http` in a policy);
    # the agent validates them. Kubernetes mode takes the Pod's instead.
    named_ports: list[_NamedPort] = Field(default_factory=list, alias="namedPorts")


class _Args(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cni: _CniArgs = Field(default_factory=_CniArgs)


class NetConf(BaseModel):
    """The network configuration; unknown keys are allowed, as the spec asks."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    cni_version: str = Field(alias="cniVersion")
    name: str = Field(min_length=1)
    type: str = Field(min_length=1)
    ipam: dict[str, Any] = Field(default_factory=dict)
    args: _Args = Field(default_factory=_Args)
    mtu: int | None = Field(default=None, ge=576, le=65535)
    agent_socket: str | None = Field(default=None, alias="agentSocket")
    wait_seconds: float = Field(default=10.0, alias="waitSeconds", ge=0)
    prev_result: dict[str, Any] | None = Field(default=None, alias="prevResult")


@dataclass(frozen=True, slots=True)
class CniEnv:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: Mapping[str, str]
    path: tuple[str, ...]


def parse_version_only(stdin: bytes) -> str:
    """The cniVersion to answer in, even when the rest of the config is broken."""
    try:
        v = json.loads(stdin or b"{}").get("cniVersion")
    except (ValueError, AttributeError):
        return "1.0.0"
    return v if isinstance(v, str) and v in SUPPORTED_VERSIONS else "1.0.0"


def parse_netconf(stdin: bytes) -> NetConf:
    try:
        raw = json.loads(stdin)
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, "network configuration on stdin is not JSON", str(exc)) from exc
    if not isinstance(raw, dict):
        raise CniError(DECODE_FAILURE, "network configuration on stdin must be a JSON object")
    try:
        conf = NetConf.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CniError(INVALID_CONFIG, f"invalid network configuration: {detail}") from exc
    if conf.cni_version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {conf.cni_version!r} is not supported; use one of {', '.join(SUPPORTED_VERSIONS)}",
        )
    if not conf.ipam.get("type"):
        raise CniError(INVALID_CONFIG, "invalid network configuration: ipam.type is required (e.g. \"host-local\")")
    return conf


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS: "K1=V1;K2=V2"."""
    out: dict[str, str] = {}
    for part in raw.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_env(env: Mapping[str, str]) -> CniEnv:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND must be one of {', '.join(COMMANDS)}, not {command!r}")
    need = ["CNI_CONTAINERID", "CNI_IFNAME"] + (["CNI_NETNS"] if command in ("ADD", "CHECK") else [])
    if command != "VERSION":
        missing = [k for k in need if not env.get(k)]
        if missing:
            raise CniError(INVALID_ENV, f"required environment variables missing: {', '.join(missing)}")
    ifname = env.get("CNI_IFNAME", "")
    if len(ifname) > 15:
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} is longer than 15 characters")
    return CniEnv(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
    )


def endpoint_labels(conf: NetConf, env: CniEnv) -> dict[str, str]:
    """Labels from args.cni.labels (CNI conventions), else the Kubernetes pod identity."""
    if conf.args.cni.labels:
        return {label.key: label.value for label in conf.args.cni.labels}
    # The pod name is not a label: one identity per pod would defeat identities.
    # Without the API server the namespace is all we know of the pod.
    ns = env.args.get("K8S_POD_NAMESPACE")
    return {f"k8s:{NAMESPACE_LABEL}": ns} if ns else {}


def display_name(env: CniEnv) -> str | None:
    ns, name = env.args.get("K8S_POD_NAMESPACE"), env.args.get("K8S_POD_NAME")
    return f"{ns}/{name}" if ns and name else None


def host_ifname(container_id: str, ifname: str) -> str:
    """Stable host-side name: the same container always gets the same veth (DEL and retries find it)."""
    return "lxc" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


def endpoint_named_ports(conf: NetConf) -> list[dict[str, Any]]:
    """args.cni.namedPorts as the agent's API takes them."""
    return [{"name": p.name, "port": p.port, "protocol": p.protocol.upper()} for p in conf.args.cni.named_ports]
