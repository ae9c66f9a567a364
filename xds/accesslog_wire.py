"""Decode Envoy's gRPC access log messages straight from the wire, reading
only the fields a flow needs. No I/O.

Why not envoy-data-plane's classes: betterproto2 builds every sub-message
of every entry as a validated dataclass, about 0.4 ms per entry here, all
of it on the agent's event loop. A pod holding thousands of connections
closes them at once and Envoy reports them together: 3,000 entries cost
~3 s of CPU and stalled the agent's API (`/healthz` took seconds). Reading
the few fields we use, and skipping the rest by wire type, is ~20x cheaper.

Field numbers are never written here: they come from the same generated
classes (schema.py), once, at import. Anything malformed raises WireError,
and the caller drops that message (Envoy is trusted, its messages are not
parsed with more care than a peer's would be).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

from envoy_data_plane.envoy.config.core.v3 import Address, Metadata, Node, RequestMethod, SocketAddress
from envoy_data_plane.envoy.data.accesslog.v3 import (
    AccessLogCommon,
    HttpAccessLogEntry,
    HttpRequestProperties,
    HttpResponseProperties,
    ResponseFlags,
)
from envoy_data_plane.envoy.service.accesslog.v3 import (
    StreamAccessLogsMessage,
    StreamAccessLogsMessageHttpAccessLogEntries,
    StreamAccessLogsMessageIdentifier,
)
from envoy_data_plane.google.protobuf import Struct, Timestamp, Value

from .schema import specs

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _n(message: type, name: str) -> int:
    return specs(message)[name].number


# Field numbers, resolved once.
_MSG_IDENTIFIER, _MSG_HTTP_LOGS = _n(StreamAccessLogsMessage, "identifier"), _n(StreamAccessLogsMessage, "http_logs")
_ID_NODE = _n(StreamAccessLogsMessageIdentifier, "node")
_NODE_ID = _n(Node, "id")
_LOGS_ENTRY = _n(StreamAccessLogsMessageHttpAccessLogEntries, "log_entry")
_E_COMMON, _E_REQUEST, _E_RESPONSE = (_n(HttpAccessLogEntry, f) for f in ("common_properties", "request", "response"))
_C_REMOTE, _C_LOCAL, _C_UPSTREAM = (
    _n(AccessLogCommon, f) for f in ("downstream_remote_address", "downstream_local_address", "upstream_remote_address")
)
_C_START, _C_FLAGS, _C_META = (_n(AccessLogCommon, f) for f in ("start_time", "response_flags", "metadata"))
_ADDR_SOCKET = _n(Address, "socket_address")
_SA_ADDRESS, _SA_PORT = _n(SocketAddress, "address"), _n(SocketAddress, "port_value")
_TS_SECONDS, _TS_NANOS = _n(Timestamp, "seconds"), _n(Timestamp, "nanos")
_RQ_METHOD, _RQ_AUTHORITY, _RQ_PATH = (_n(HttpRequestProperties, f) for f in ("request_method", "authority", "path"))
_RS_CODE = _n(HttpResponseProperties, "response_code")
_META_FILTER = _n(Metadata, "filter_metadata")
_STRUCT_FIELDS = _n(Struct, "fields")
_VALUE_STRING = _n(Value, "string_value")
_FLAG_NAMES = {s.number: name for name, s in specs(ResponseFlags).items() if s.proto_type == "bool"}
_METHODS = {m.value: m.name for m in RequestMethod}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise WireError("truncated or overlong varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field: an int for varints
    and fixed-width fields, bytes for length-delimited ones."""
    i, end = 0, len(buf)
    while i < end:
        # One-byte tags and lengths are nearly all of them: no call for those.
        tag = buf[i]
        if tag < 0x80:
            i += 1
        else:
            tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if wire == LEN:
            if i >= end:
                raise WireError("truncated length")
            size = buf[i]
            if size < 0x80:
                i += 1
            else:
                size, i = _varint(buf, i)
            if i + size > end:
                raise WireError("length-delimited field runs past the message")
            yield number, wire, buf[i : i + size]
            i += size
        elif wire == VARINT:
            value, i = _varint(buf, i)
            yield number, wire, value
        elif wire == FIXED64:
            if i + 8 > end:
                raise WireError("truncated fixed64")
            yield number, wire, int.from_bytes(buf[i : i + 8], "little")
            i += 8
        elif wire == FIXED32:
            if i + 4 > end:
                raise WireError("truncated fixed32")
            yield number, wire, int.from_bytes(buf[i : i + 4], "little")
            i += 4
        else:
            raise WireError(f"unsupported wire type {wire}")


def _len(wire: int, value: int | bytes) -> bytes:
    if wire != LEN or not isinstance(value, bytes):
        raise WireError("expected a length-delimited field")
    return value


def _text(wire: int, value: int | bytes) -> str:
    return _len(wire, value).decode("utf-8", errors="replace")


def _int(wire: int, value: int | bytes) -> int:
    if wire != VARINT or not isinstance(value, int):
        raise WireError("expected a varint field")
    return value


def _address(buf: bytes) -> str:
    host, port = "", 0
    for n, w, v in fields(buf):
        if n == _ADDR_SOCKET:
            for n2, w2, v2 in fields(_len(w, v)):
                if n2 == _SA_ADDRESS:
                    host = _text(w2, v2)
                elif n2 == _SA_PORT:
                    port = _int(w2, v2)
    return f"{host}:{port}" if host else ""


def _time(buf: bytes) -> datetime:
    seconds = nanos = 0
    for n, w, v in fields(buf):
        if n == _TS_SECONDS:
            seconds = _int(w, v)
        elif n == _TS_NANOS:
            nanos = _int(w, v)
    return datetime.fromtimestamp(seconds + nanos / 1e9, timezone.utc)


def _flags(buf: bytes) -> frozenset[str]:
    return frozenset(_FLAG_NAMES[n] for n, w, v in fields(buf) if n in _FLAG_NAMES and w == VARINT and v)


def _map_entry(buf: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for n, w, v in fields(buf):
        if n == 1:  # map entries are {key = 1, value = 2} by the protobuf spec
            key = _text(w, v)
        elif n == 2:
            value = _len(w, v)
    return key, value


def filter_metadata(buf: bytes, namespace: str) -> dict[str, str]:
    """The string values of one filter's dynamic metadata (a Struct)."""
    out: dict[str, str] = {}
    for n, w, v in fields(buf):
        if n != _META_FILTER:
            continue
        key, struct = _map_entry(_len(w, v))
        if key != namespace:
            continue
        for n2, w2, v2 in fields(struct):
            if n2 != _STRUCT_FIELDS:
                continue
            name, value = _map_entry(_len(w2, v2))
            for n3, w3, v3 in fields(value):
                if n3 == _VALUE_STRING:
                    out[name] = _text(w3, v3)
    return out


def http_entry(buf: bytes, metadata_namespace: str) -> dict:
    """One HTTPAccessLogEntry as the plain fields accesslog.AccessLogEntry takes."""
    out: dict = {
        "time": None, "method": "", "path": "", "authority": "", "status": 0, "upstream": "",
        "downstream_remote": "", "downstream_local": "", "response_flags": frozenset(), "metadata": {},
    }
    for n, w, v in fields(buf):
        if n == _E_COMMON:
            for n2, w2, v2 in fields(_len(w, v)):
                if n2 == _C_REMOTE:
                    out["downstream_remote"] = _address(_len(w2, v2))
                elif n2 == _C_LOCAL:
                    out["downstream_local"] = _address(_len(w2, v2))
                elif n2 == _C_UPSTREAM:
                    out["upstream"] = _address(_len(w2, v2))
                elif n2 == _C_START:
                    out["time"] = _time(_len(w2, v2))
                elif n2 == _C_FLAGS:
                    out["response_flags"] = _flags(_len(w2, v2))
                elif n2 == _C_META:
                    out["metadata"] = filter_metadata(_len(w2, v2), metadata_namespace)
        elif n == _E_REQUEST:
            for n2, w2, v2 in fields(_len(w, v)):
                if n2 == _RQ_METHOD:
                    code = _int(w2, v2)
                    out["method"] = _METHODS.get(code, "") if code else ""
                elif n2 == _RQ_AUTHORITY:
                    out["authority"] = _text(w2, v2)
                elif n2 == _RQ_PATH:
                    out["path"] = _text(w2, v2)
        elif n == _E_RESPONSE:
            for n2, w2, v2 in fields(_len(w, v)):
                if n2 == _RS_CODE:  # a UInt32Value wrapper: {value = 1}
                    out["status"] = next((_int(w3, v3) for n3, w3, v3 in fields(_len(w2, v2)) if n3 == 1), 0)
    return out


def stream_message(buf: bytes) -> tuple[str | None, list[bytes]]:
    """(node id if this message carries the identifier, else None; the raw
    HTTP entries it carries)."""
    node: str | None = None
    entries: list[bytes] = []
    for n, w, v in fields(buf):
        if n == _MSG_IDENTIFIER:
            node = ""
            for n2, w2, v2 in fields(_len(w, v)):
                if n2 == _ID_NODE:
                    for n3, w3, v3 in fields(_len(w2, v2)):
                        if n3 == _NODE_ID:
                            node = _text(w3, v3)
        elif n == _MSG_HTTP_LOGS:
            entries.extend(_len(w2, v2) for n2, w2, v2 in fields(_len(w, v)) if n2 == _LOGS_ENTRY)
    return node, entries
