"""Field numbers and wire types of the Envoy messages we emit, read from the
one declared source: envoy-data-plane's generated message classes. No I/O.

Each betterproto2 message is a dataclass whose fields carry a `FieldMetadata`
(`betterproto2.field(5, "message", repeated=True)`): number, proto type, oneof
group, the well-known wrapper it unwraps (BoolValue, UInt32Value, Duration)
and, for maps, the entry's key/value metadata. `spec(Message, "field")` turns
that into what the wire encoder needs (serialize.py), once per field: the
encoder resolves everything at import, never on the hot path.

Why envoy-data-plane and not the `xds-protos` package (on PyPI, installable):
envoy-data-plane is already the pinned dependency whose classes decode
requests in the ADS sessions and decode our output in the tests, so the
numbers we write and the numbers we check come from the same generated code.
xds-protos would add grpcio and protobuf descriptor pools for the same numbers
and a second copy of the Envoy API that could drift from the decoder's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

from betterproto2 import FieldMetadata

# Protobuf wire types (encoding spec): varint and length-delimited are all we write.
VARINT, LEN = 0, 2

_WIRE_TYPES = {
    "bool": VARINT,
    "enum": VARINT,
    "int32": VARINT,
    "int64": VARINT,
    "uint32": VARINT,
    "uint64": VARINT,
    "string": LEN,
    "bytes": LEN,
    "message": LEN,
    "map": LEN,
}


class SchemaError(Exception):
    """A field the encoder cannot write: unknown name or unsupported type."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    message: type
    name: str
    number: int
    proto_type: str
    wire_type: int
    oneof: str | None  # oneof group: members are written even when zero
    repeated: bool
    wrapper: type | None  # the well-known message the library unwraps (BoolValue, Duration)
    map_key: FieldSpec | None  # map<K, V>: the entry message's key and value
    map_value: FieldSpec | None

    @property
    def where(self) -> str:
        return f"{self.message.__name__}.{self.name}"


def _spec(message: type, name: str, md: FieldMetadata) -> FieldSpec:
    wire = _WIRE_TYPES.get(md.proto_type)
    if wire is None:
        raise SchemaError(f"{message.__name__}.{name}: proto type {md.proto_type!r} is not supported by the encoder")
    key = value = None
    if md.map_meta is not None:
        key = _spec(message, f"{name}[key]", md.map_meta[0])
        value = _spec(message, f"{name}[value]", md.map_meta[1])
    return FieldSpec(
        message=message,
        name=name,
        number=md.number,
        proto_type=md.proto_type,
        wire_type=wire,
        oneof=md.group,
        repeated=bool(md.repeated),
        wrapper=md.unwrap() if md.unwrap is not None else None,
        map_key=key,
        map_value=value,
    )


@lru_cache(maxsize=None)
def specs(message: type) -> dict[str, FieldSpec]:
    """Every field of a generated message class, by Python field name."""
    if not dataclasses.is_dataclass(message):
        raise SchemaError(f"{message!r} is not a generated message class")
    out = {}
    for f in dataclasses.fields(message):
        md = f.metadata.get("betterproto")
        if md is None:
            continue
        try:
            out[f.name] = _spec(message, f.name, md)
        except SchemaError:
            continue  # a field we never write (fixed64, double...): refused only if asked for, in spec()
    return out


def spec(message: type, name: str) -> FieldSpec:
    got = specs(message).get(name)
    if got is None:
        known = {f.name for f in dataclasses.fields(message)}
        if name in known:
            md = next(f for f in dataclasses.fields(message) if f.name == name).metadata["betterproto"]
            return _spec(message, name, md)  # raises the unsupported-type error
        raise SchemaError(f"{message.__name__} has no field {name!r}")
    return got
