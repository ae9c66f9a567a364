"""AccessLogServer's consumer side (the Envoy side is covered by
test_envoy_enforcement's access log test)."""

from __future__ import annotations

import datetime as dt
from datetime import datetime, timezone

from xds.accesslog import AccessLogEntry, AccessLogServer


def _entry(i: int) -> AccessLogEntry:
    return AccessLogEntry(
        time=datetime.now(timezone.utc), node="n", method="GET", path=f"/{i}", authority="a",
        status=200, upstream="127.0.0.1:1", downstream_remote="127.0.0.1:2", downstream_local="127.0.0.1:3",
        response_flags=frozenset(),
    )


async def test_a_full_queue_drops_the_oldest_and_counts_it():
    als = AccessLogServer(socket_path="/unused", max_queue=3)
    for i in range(5):
        als._put(_entry(i))
    assert als.dropped == 2
    got = [(await als.get()).path for _ in range(3)]
    assert got == ["/2", "/3", "/4"]


def test_denied_is_rbac_flag_or_local_403():
    e = _entry(0)
    assert not e.denied
    from dataclasses import replace

    assert replace(e, status=403, upstream="").denied
    assert replace(e, response_flags=frozenset({"unauthorized_details"})).denied
    assert not replace(e, status=403).denied, "an upstream's own 403 is not a policy denial"


def test_shadow_denial_of_either_rbac_filter_marks_the_entry_audited():
    """Policy audit mode: Envoy's RBAC shadow verdict, from the dynamic metadata."""
    from envoy_data_plane.envoy.config.core.v3 import Metadata
    from envoy_data_plane.envoy.data.accesslog.v3 import AccessLogCommon, HttpAccessLogEntry
    from envoy_data_plane.google.protobuf import Struct, Value

    from xds.accesslog import entry_from_wire

    def entry(fields: dict) -> AccessLogEntry:
        meta = Metadata(filter_metadata={"envoy.filters.http.rbac": Struct(fields={k: Value(string_value=v) for k, v in fields.items()})})
        return entry_from_wire("n", bytes(HttpAccessLogEntry(common_properties=AccessLogCommon(metadata=meta))))

    assert entry({"shadow_engine_result": "denied"}).audited
    assert entry({"shadow_engine_result": "allowed", "receiver_shadow_engine_result": "denied"}).audited
    assert not entry({"shadow_engine_result": "allowed", "receiver_shadow_engine_result": "allowed"}).audited
    assert not entry_from_wire("n", bytes(HttpAccessLogEntry())).audited
    got = entry({"receiver_shadow_engine_result": "denied", "receiver_shadow_effective_policy_id": "receiver-7"})
    assert got.shadow_policy == "receiver-7"


def _full_entry(i: int):
    """An entry with every field the decoder reads, and many it must skip."""
    from envoy_data_plane.envoy.config.core.v3 import Address, Metadata, RequestMethod, SocketAddress
    from envoy_data_plane.envoy.data.accesslog.v3 import (
        AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties, ResponseFlags,
    )
    from envoy_data_plane.google.protobuf import Struct, Value

    def addr(ip: str, port: int) -> Address:
        return Address(socket_address=SocketAddress(address=ip, port_value=port))

    meta = Metadata(filter_metadata={
        "other.filter": Struct(fields={"shadow_engine_result": Value(string_value="denied")}),
        "envoy.filters.http.rbac": Struct(fields={"shadow_engine_result": Value(string_value="allowed"), "n": Value(number_value=1.5)}),
    })
    common = AccessLogCommon(
        sample_rate=0.5, downstream_remote_address=addr("10.0.0.3", 40000 + i), downstream_local_address=addr("10.0.0.2", 80),
        upstream_remote_address=addr("10.0.0.2", 80) if i % 2 else None, upstream_cluster="c",
        start_time=dt.datetime(2026, 12, 7, 4, 5, 6, 250000, tzinfo=dt.timezone.utc),
        response_flags=ResponseFlags(no_healthy_upstream=bool(i % 3), unauthorized_details=None) if i % 3 else ResponseFlags(),
        metadata=meta, route_name="r",
    )
    req = HttpRequestProperties(
        request_method=[RequestMethod.GET, RequestMethod.POST, RequestMethod.METHOD_UNSPECIFIED][i % 3], scheme="http",
        authority=f"host-{i}", path=f"/p/{i}?q=\u00e9", user_agent="curl", request_headers_bytes=120 + i,
    )
    return HttpAccessLogEntry(common_properties=common, request=req, response=HttpResponseProperties(response_code=200 + i, response_body_bytes=9))


def test_the_wire_decoder_reads_what_envoy_data_planes_classes_read():
    from envoy_data_plane.envoy.data.accesslog.v3 import HttpAccessLogEntry

    from xds.accesslog import entry_from_wire

    for i in range(6):
        e = _full_entry(i)
        got = entry_from_wire("node-1", bytes(e))
        back = HttpAccessLogEntry.parse(bytes(e))
        c = back.common_properties
        assert got.time == c.start_time
        assert (got.method, got.path, got.authority, got.status) == (
            back.request.request_method.name if back.request.request_method else "", back.request.path, back.request.authority,
            back.response.response_code,
        )
        sa = c.downstream_remote_address.socket_address
        assert got.downstream_remote == f"{sa.address}:{sa.port_value}"
        assert got.upstream == ("10.0.0.2:80" if i % 2 else "")
        assert got.response_flags == frozenset(k for k, v in vars(c.response_flags).items() if v is True)
        assert not got.shadow_denied, "another filter's metadata is not the RBAC filter's"


def test_a_stream_message_gives_its_node_and_entries_and_malformed_bytes_are_refused():
    import pytest
    from envoy_data_plane.envoy.config.core.v3 import Node
    from envoy_data_plane.envoy.service.accesslog.v3 import (
        StreamAccessLogsMessage, StreamAccessLogsMessageHttpAccessLogEntries, StreamAccessLogsMessageIdentifier,
    )

    from xds import accesslog_wire as wire

    msg = StreamAccessLogsMessage(
        identifier=StreamAccessLogsMessageIdentifier(node=Node(id="sidecar~1", cluster="c"), log_name="l"),
        http_logs=StreamAccessLogsMessageHttpAccessLogEntries(log_entry=[_full_entry(i) for i in range(3)]),
    )
    node, entries = wire.stream_message(bytes(msg))
    assert node == "sidecar~1" and [bytes(_full_entry(i)) for i in range(3)] == entries
    assert wire.stream_message(bytes(StreamAccessLogsMessage(http_logs=msg.http_logs)))[0] is None
    for bad in (b"\x0a\x05ab", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0b", b"\x09\x00"):
        with pytest.raises(wire.WireError):
            wire.stream_message(bad)
