"""AccessLogServer's consumer side (the Envoy side is covered by
test_envoy_enforcement's access log test)."""

from __future__ import annotations

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

    from xds.accesslog import entry_from_proto

    def entry(fields: dict) -> AccessLogEntry:
        meta = Metadata(filter_metadata={"envoy.filters.http.rbac": Struct(fields={k: Value(string_value=v) for k, v in fields.items()})})
        return entry_from_proto("n", HttpAccessLogEntry(common_properties=AccessLogCommon(metadata=meta)))

    assert entry({"shadow_engine_result": "denied"}).audited
    assert entry({"shadow_engine_result": "allowed", "receiver_shadow_engine_result": "denied"}).audited
    assert not entry({"shadow_engine_result": "allowed", "receiver_shadow_engine_result": "allowed"}).audited
    assert not entry_from_proto("n", HttpAccessLogEntry()).audited
