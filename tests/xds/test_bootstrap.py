"""The sidecar bootstrap rendered from envoy/bootstrap.yaml (pure)."""

from __future__ import annotations

import pytest

from sidecar.bootstrap import BootstrapParams, read_admin_socket, render_bootstrap, write_bootstrap
from sidecar.errors import EnvoyError


def _cluster(doc, name):
    return next(c for c in doc["static_resources"]["clusters"] if c["name"] == name)


def _address(cluster):
    return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]


@pytest.mark.parametrize(
    "xds, want",
    [
        pytest.param("/run/ciliate/xds.sock", {"pipe": {"path": "/run/ciliate/xds.sock"}}, id="unix-socket"),
        pytest.param(("127.0.0.1", 18000), {"socket_address": {"address": "127.0.0.1", "port_value": 18000}}, id="loopback-tcp"),
    ],
)
def test_ads_endpoint_node_and_root_only_unix_admin(xds, want):
    doc = render_bootstrap(BootstrapParams("node-a", xds, admin_socket="/run/ciliate/envoy/admin-1.sock"))
    assert doc["node"]["id"] == "node-a"
    assert _address(_cluster(doc, "ciliate-xds")) == want
    assert doc["admin"]["address"] == {"pipe": {"path": "/run/ciliate/envoy/admin-1.sock", "mode": 0o600}}
    assert doc["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert [c["name"] for c in doc["static_resources"]["clusters"]] == ["ciliate-xds"], "no access log endpoint, no cluster"


def test_delta_and_access_log_cluster():
    doc = render_bootstrap(BootstrapParams("n", "/x.sock", "/a.sock", accesslog="/als.sock", delta=True))
    assert doc["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    assert _address(_cluster(doc, "ciliate-accesslog")) == {"pipe": {"path": "/als.sock"}}


@pytest.mark.parametrize(
    "params, needle",
    [
        pytest.param(BootstrapParams("n", ("10.0.0.1", 18000), "/a.sock"), "loopback", id="non-loopback-xds"),
        pytest.param(BootstrapParams("", "/x.sock", "/a.sock"), "node_id", id="empty-node-id"),
        pytest.param(BootstrapParams("n", "/x.sock"), "admin_socket", id="no-admin-socket"),
        pytest.param(BootstrapParams("n", "/x.sock", "@envoy-admin"), "admin_socket", id="abstract-admin-socket"),
        pytest.param(BootstrapParams("n", "/x.sock", "admin.sock"), "admin_socket", id="relative-admin-socket"),
        pytest.param(BootstrapParams("n", "/x.sock", "/" + "a" * 120), "longer than", id="admin-socket-too-long"),
    ],
)
def test_bad_parameters_are_clear_errors(params, needle):
    with pytest.raises(EnvoyError, match=needle):
        render_bootstrap(params)


def test_node_id_is_quoted_not_interpreted():
    doc = render_bootstrap(BootstrapParams("a: b # c", "/x.sock", "/a.sock"))
    assert doc["node"]["id"] == "a: b # c"


def test_written_bootstrap_is_root_only_and_names_its_admin_socket(tmp_path):
    path = tmp_path / "bootstrap.json"
    path.write_text("{}")
    path.chmod(0o644)  # as an older install left it
    write_bootstrap(BootstrapParams("n", "/x.sock", "/run/e/admin-2.sock"), path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_admin_socket(path) == "/run/e/admin-2.sock"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="missing"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b'{"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}}}', id="older-tcp-admin"),
        pytest.param(b'{"admin": {"address": {"pipe": {"path": "@abstract"}}}}', id="abstract"),
    ],
)
def test_no_admin_socket_read_from_an_unusable_bootstrap(tmp_path, content):
    path = tmp_path / "bootstrap.json"
    if content is not None:
        path.write_bytes(content)
    assert read_admin_socket(path) is None
