"""Discovery documents: what `kubectl` and the clients read to map kinds,
short names and verbs onto URLs."""

from __future__ import annotations

from typing import Any

from .resources import MAIN_VERBS, RESOURCES, STATUS_VERBS, group_versions

SERVER_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-kubesim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-01-01T00:00:00Z",
    "goVersion": "go1.22.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list() -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(g, vs) for g, vs in group_versions().items()],
    }


def api_group(name: str) -> dict[str, Any] | None:
    versions = group_versions().get(name)
    if versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    resources: list[dict[str, Any]] = []
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        main: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(MAIN_VERBS),
        }
        if r.short_names:
            main["shortNames"] = list(r.short_names)
        if r.categories:
            main["categories"] = list(r.categories)
        resources.append(main)
        if r.has_status:
            resources.append({
                "name": f"{r.plural}/status",
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": list(STATUS_VERBS),
            })
    if not resources:
        return None
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def _proto_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2); payloads stay under 128 bytes."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


# An OpenAPI v2 document with no paths and no definitions. kubectl fetches
# /openapi/v2 (as the gnostic protobuf `openapi_v2.Document`: swagger = 1,
# info = 2 with title = 1 and version = 2) to validate objects client-side;
# for a kind the document does not define it skips validation, and for
# strategic merge patches of built-in kinds it falls back to its compiled-in
# types. So an empty but valid document lets kubectl work with validation on.
OPENAPI_V2_JSON = {"swagger": "2.0", "info": {"title": "kubesim", "version": SERVER_VERSION["gitVersion"]},
                   "paths": {}}
OPENAPI_V2_PROTOBUF = _proto_field(1, b"2.0") + _proto_field(
    2, _proto_field(1, b"kubesim") + _proto_field(2, SERVER_VERSION["gitVersion"].encode())
)
OPENAPI_V2_PROTOBUF_TYPE = "application/octet-stream"  # Go's mime parser refuses the "@" of the official type
