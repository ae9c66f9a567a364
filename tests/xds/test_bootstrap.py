"""The sidecar bootstrap rendered from envoy/bootstrap.yaml (pure)."""

from __future__ import annotations

import pytest

from sidecar.bootstrap import BootstrapParams, render_bootstrap
from xds.errors import EnvoyError


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
def test_ads_endpoint_node_and_loopback_admin(xds, want):
    doc = render_bootstrap(BootstrapParams("node-a", xds, admin_port=9901))
    assert doc["node"]["id"] == "node-a"
    assert _address(_cluster(doc, "ciliate-xds")) == want
    assert doc["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    assert doc["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert [c["name"] for c in doc["static_resources"]["clusters"]] == ["ciliate-xds"], "no access log endpoint, no cluster"


def test_delta_and_access_log_cluster():
    doc = render_bootstrap(BootstrapParams("n", "/x.sock", accesslog="/als.sock", delta=True))
    assert doc["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    assert _address(_cluster(doc, "ciliate-accesslog")) == {"pipe": {"path": "/als.sock"}}


@pytest.mark.parametrize(
    "params, needle",
    [
        pytest.param(BootstrapParams("n", ("10.0.0.1", 18000)), "loopback", id="non-loopback-xds"),
        pytest.param(BootstrapParams("", "/x.sock"), "node_id", id="empty-node-id"),
    ],
)
def test_bad_parameters_are_clear_errors(params, needle):
    with pytest.raises(EnvoyError, match=needle):
        render_bootstrap(params)


def test_node_id_is_quoted_not_interpreted():
    doc = render_bootstrap(BootstrapParams("a: b # c", "/x.sock"))
    assert doc["node"]["id"] == "a: b # c"
