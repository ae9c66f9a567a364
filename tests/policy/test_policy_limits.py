"""Input limits on policy files: a size cap read before the content, Kubernetes label
syntax in selectors, and a file that is not UTF-8 named with the offending byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policy import labels
from policy.load import MAX_FILE_BYTES, load_paths


def cnp(selector: dict, peer: dict | None = None, name: str = "p") -> dict:
    spec: dict = {"endpointSelector": selector}
    if peer is not None:
        spec["ingress"] = [{"fromEndpoints": [peer]}]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def errors_of(tmp_path: Path, doc: dict) -> list[str]:
    f = tmp_path / "p.json"
    f.write_text(json.dumps(doc))
    return [str(e) for e in load_paths([f]).errors]


# --- file size -------------------------------------------------------------------


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:  # sparse: 50 MB that costs nothing to make
        f.truncate(50 * 1024 * 1024)
    read: list[str] = []

    class Counting:
        def __init__(self, fh) -> None:  # noqa: ANN001
            self.fh = fh

        def __enter__(self) -> "Counting":
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def fileno(self) -> int:
            return self.fh.fileno()

        def read(self, n: int = -1) -> bytes:
            read.append("read")
            return self.fh.read(n)

    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **kw: Counting(real_open(self, *a, **kw)))
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **kw: read.append("read_text") or "")
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append("read_bytes") or b"")
    res = load_paths([big])
    assert [str(e) for e in res.errors] == [f"{big}: file is {50 * 1024 * 1024} bytes, over the {MAX_FILE_BYTES}-byte limit"]
    assert read == [] and res.policies == []


def test_the_limit_fits_a_file_of_many_kubernetes_sized_objects() -> None:
    assert 1536 * 1024 < MAX_FILE_BYTES <= 16 * 1024 * 1024


def test_a_file_just_under_the_limit_loads_and_others_in_the_directory_still_load(tmp_path: Path) -> None:
    good = cnp({"matchLabels": {"app": "a"}})
    padding = " " * (MAX_FILE_BYTES - len(json.dumps(good)) - 10)
    (tmp_path / "a.json").write_text(json.dumps(good) + padding)
    (tmp_path / "b.json").write_text(json.dumps(cnp({"matchLabels": {"app": "b"}}, name="b")) + " " * MAX_FILE_BYTES)
    res = load_paths([tmp_path])
    assert [p.name for p in res.policies] == ["p"]
    assert [str(e) for e in res.errors] == [f"{tmp_path / 'b.json'}: file is {(tmp_path / 'b.json').stat().st_size} bytes, over the {MAX_FILE_BYTES}-byte limit"]


def test_not_utf8_names_the_file_byte_and_offset(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"abc\xffdef")
    assert [str(e) for e in load_paths([bad]).errors] == [f"{bad}: cannot read: not UTF-8 (byte 0xff at offset 3)"]


# --- label syntax in selectors -------------------------------------------------------


@pytest.mark.parametrize(
    "selector, field, reason",
    [
        ({"matchLabels": {"app": "x" * 100_000}}, "spec.endpointSelector.matchLabels.app", "longer than 63 characters"),
        ({"matchLabels": {"app": "-x"}}, "spec.endpointSelector.matchLabels.app", "must be empty or start and end"),
        ({"matchLabels": {"app": "a b"}}, "spec.endpointSelector.matchLabels.app", "label value 'a b'"),
        ({"matchLabels": {"x" * 64: "v"}}, "spec.endpointSelector.matchLabels." + "x" * 64, "longer than 63 characters"),
        ({"matchLabels": {"Example.COM/app": "v"}}, "spec.endpointSelector.matchLabels.Example.COM/app", "must be a DNS subdomain"),
        ({"matchLabels": {"a" * 254 + "/app": "v"}}, "spec.endpointSelector.matchLabels." + "a" * 80 + "...", "longer than 253 characters"),
        ({"matchLabels": {"/app": "v"}}, "spec.endpointSelector.matchLabels./app", "empty prefix"),
        ({"matchLabels": {"k8s:app!": "v"}}, "spec.endpointSelector.matchLabels.k8s:app!", "label key 'app!'"),
        ({"matchLabels": {"bad source:app": "v"}}, "spec.endpointSelector.matchLabels.bad source:app", "label source 'bad source'"),
        ({"matchExpressions": [{"key": "a\u00e9", "operator": "Exists"}]}, "spec.endpointSelector.matchExpressions[0].key", "label key"),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["ok", "y" * 64]}]}, "spec.endpointSelector.matchExpressions[0].values[1]", "longer than 63"),
    ],
)
def test_selector_labels_follow_kubernetes_syntax(tmp_path: Path, selector: dict, field: str, reason: str) -> None:
    errs = errors_of(tmp_path, cnp(selector))
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{tmp_path / 'p.json'}: {field}: ") and reason in errs[0], errs[0]
    assert len(errs[0]) < 600  # a 100k value is not echoed whole


def test_peer_and_namespace_selectors_are_checked_too(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, cnp({}, {"matchLabels": {"app": "v" * 64}}))
    assert errs == [f"{tmp_path / 'p.json'}: spec.ingress[0].fromEndpoints[0].matchLabels.app: label value {'v' * 40!r}... (64 characters) is longer than 63 characters"]
    np = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "n", "namespace": "default"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a+b"}}}]}]},
    }
    (err,) = errors_of(tmp_path, np)
    assert "spec.ingress[0].from[0].namespaceSelector.matchLabels.team: label value 'a+b'" in err


def test_cilium_style_keys_stay_valid(tmp_path: Path) -> None:
    sel = {
        "matchLabels": {
            "k8s:io.kubernetes.pod.namespace": "default",
            "io.cilium.k8s.policy.name": "x",
            "any:app": "web",
            "app.kubernetes.io/name": "web-1.2_3",
            "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "prod",
            "empty": "",
            "a" * 63: "b" * 63,
        },
        "matchExpressions": [{"key": "k8s:tier", "operator": "NotIn", "values": ["db", "cache"]}],
    }
    assert errors_of(tmp_path, cnp(sel, {"matchLabels": {"reserved:host": ""}})) == []


def test_the_examples_still_load() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    res = load_paths([root])
    assert res.errors == [] and len(res.policies) >= 5


# --- the label module itself ----------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "A-b_c.d", "x" * 63, "example.com/app", "a-b.c/d", "a" * 253 + "/x"])
def test_valid_keys(key: str) -> None:
    assert labels.key_problem(key) is None


@pytest.mark.parametrize("key", ["", "-a", "a-", "a b", "x" * 64, "Example.com/a", "a..b/c", "/a", "a/", "a/b/c", "é", "a\n", "a" * 254 + "/x"])
def test_invalid_keys(key: str) -> None:
    assert labels.key_problem(key) is not None


@pytest.mark.parametrize("value, ok", [("", True), ("a", True), ("a.b-c_d", True), ("x" * 63, True), ("x" * 64, False), ("-a", False), ("a\n", False), ("١", False)])
def test_values(value: str, ok: bool) -> None:
    assert (labels.value_problem(value) is None) == ok


def test_one_document_over_the_kubernetes_object_limit_is_refused_and_its_neighbours_load(tmp_path: Path) -> None:
    from policy.load import MAX_DOCUMENT_BYTES

    small = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: ok}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n"
    big = small.replace("name: ok", "name: big").replace("  ingress: [{}]\n", "  description: " + "x" * MAX_DOCUMENT_BYTES + "\n")
    path = tmp_path / "p.yaml"
    path.write_text(small + "---\n" + big)
    res = load_paths([path])
    assert [p.name for p in res.policies] == ["ok"]
    assert len(res.errors) == 1
    msg = str(res.errors[0])
    assert msg.startswith(f"{path}:1:") and "over the 1572864-byte limit of a Kubernetes object" in msg, msg
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "j"},
                                   "spec": {"endpointSelector": {}, "description": "x" * MAX_DOCUMENT_BYTES}}))
    assert "limit of a Kubernetes object" in str(load_paths([as_json]).errors[0])
