"""The wire encoder against envoy-data-plane's classes: every field of every
message we emit, written by its resolved encoder, decodes into that field and
no other; oneof/proto3 presence rules; discovery responses; and no field
number written by hand anywhere in xds/."""

from __future__ import annotations

import ast
import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from envoy_data_plane.envoy.config.core.v3 import SocketAddress, SocketOption
from envoy_data_plane.envoy.service.discovery.v3 import DeltaDiscoveryResponse, DiscoveryResponse
from envoy_data_plane.google.protobuf import Duration

from xds import messages as pb
from xds import serialize
from xds.resources import ROUTE
from xds.schema import SchemaError, spec, specs

XDS = Path(__file__).resolve().parents[2] / "xds"


def _sample(f):
    """(arguments for the field's encoder, the value the library decodes)."""
    if f.map_key is not None:
        return ("k", b""), None  # value checked by key below
    if f.wrapper is Duration:
        return (1.5,), timedelta(seconds=1.5)
    if f.wrapper is not None:
        v = True if f.wrapper.__name__ == "BoolValue" else 300
        return (v,), v
    if f.proto_type == "message":
        return (), None  # presence checked below
    value = {"string": "x", "bytes": b"xy", "bool": True, "enum": 1}.get(f.proto_type, 300)
    return (value,), [value] if f.repeated else value


FIELDS = [
    pytest.param(table, name, id=f"{table_name}.{name}")
    for table_name, table in sorted(pb.ALL.items())
    for name in sorted(vars(table))
    if not name.startswith("_")
]


@pytest.mark.parametrize("table, name", FIELDS)
def test_every_field_encoder_decodes_into_its_field(table, name):
    cls = table._message
    f = spec(cls, name)
    args, want = _sample(f)
    got = cls.parse(getattr(table, name)(*args))
    value = getattr(got, name)
    if f.map_key is not None:
        assert list(value) == ["k"]
    elif f.proto_type == "message" and f.wrapper is None:
        assert (len(value) == 1) if f.repeated else (value is not None)
    elif f.proto_type == "enum":
        assert int(value) == want
    else:
        assert value == want
    default = cls()
    changed = [x.name for x in dataclasses.fields(cls) if getattr(got, x.name) != getattr(default, x.name)]
    assert changed == [name], "the bytes landed in another field too"


def test_every_field_of_a_table_is_resolved_from_the_library():
    # The tables carry the library's numbers, not a copy: one spot check per kind.
    assert spec(pb.HttpConnectionManager._message, "http_filters").number == 5
    assert spec(pb.Cluster._message, "original_dst_lb_config").number == 34
    assert spec(pb.Principal._message, "direct_remote_ip").oneof == "identifier"
    assert set(vars(pb.Listener)) - {"_message"} == set(specs(pb.Listener._message))


def test_presence_follows_proto3_and_oneof_rules():
    # A oneof member is written even when zero: it selects the case.
    assert SocketAddress.parse(pb.SocketAddress.port_value(0)).port_value == 0
    assert pb.SocketAddress.address("") == b""  # proto3 scalar: empty omitted
    assert pb.Permission.any(True) and pb.HeaderMatcher.invert_match(False) == b""
    # A wrapper keeps its presence even when its value is zero/false.
    assert pb.Listener.transparent(False) != b""
    # Negative int64 is a 10-byte varint.
    assert SocketOption.parse(pb.SocketOption.level(-1)).level == -1


def test_unknown_or_unsupported_field_is_a_clear_error():
    with pytest.raises(SchemaError, match="Listener has no field 'nmae'"):
        pb.Listener.nmae("x")
    with pytest.raises(SchemaError, match="FilterChainMatch.source_ports: repeated uint32"):
        pb.FilterChainMatch.source_ports(80)


@pytest.mark.parametrize("n", [pytest.param(0, id="varint-zero"), pytest.param(300, id="varint-2-bytes"), pytest.param(2**40, id="varint-large")])
def test_discovery_responses_decode(n):
    body = pb.SocketOption.int_value(n) + pb.SocketOption.description("x")
    sotw = DiscoveryResponse.parse(serialize.discovery_response("v1", ROUTE, "7", [body]))
    assert (sotw.version_info, sotw.type_url, sotw.nonce, sotw.resources[0].value) == ("v1", ROUTE, "7", body)
    assert SocketOption.parse(sotw.resources[0].value).int_value == n
    delta = DeltaDiscoveryResponse.parse(
        serialize.delta_discovery_response("v1", ROUTE, "8", [("a", "h1", body)], ["gone"])
    )
    assert (delta.resources[0].name, delta.resources[0].version, delta.resources[0].resource.value) == ("a", "h1", body)
    assert (delta.type_url, delta.nonce, delta.removed_resources) == (ROUTE, "8", ["gone"])


def _literal_field_numbers(path: Path) -> list[str]:
    """Calls to a serialize primitive or `tag(...)` whose first argument is an int literal."""
    primitives = {"u", "u_present", "b", "b_present", "s", "s_present", "raw", "m", "wrapped", "duration",
                  "map_entry", "tag", "wrapped_bool", "wrapped_u32", "any_"}
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
        first = node.args[0]
        if name in primitives and isinstance(first, ast.Constant) and isinstance(first.value, int):
            out.append(f"{path.name}:{node.lineno}")
    return out


def test_no_field_number_is_written_by_hand_in_xds():
    found = [hit for p in sorted(XDS.glob("*.py")) for hit in _literal_field_numbers(p)]
    assert found == []
