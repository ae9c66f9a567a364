"""The key layout: every key and value this package writes or reads in etcd
is built and parsed here, nowhere else (see the package docstring for the
table). Values are byte-exact: identity values are compared with etcd's
VALUE compare by every node, so `labels_value()` is the one encoder.
Malformed keys or values written by somebody else parse to None (the caller
skips them) instead of raising. No I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from kvstore.model import Identity, NamedPortRecord, NodeInfo, NodeName, RemoteEndpoint

PREFIX = "ciliate/state/"
IDENTITIES = PREFIX + "identities/v1/"
IDS = IDENTITIES + "id/"
LABELS = IDENTITIES + "labels/"
REFS = IDENTITIES + "refs/"
NODES = PREFIX + "nodes/v1/"
IPS = PREFIX + "ip/v1/"

# Label identities allocated cluster-wide (reserved 1..8 are local constants
# and never stored; 9..255 stay unused as in Cilium).
ID_MIN = 256
ID_MAX = 65535


def _b(s: str) -> bytes:
    return s.encode()


# -- labels ------------------------------------------------------------------


def check_labels(labels: frozenset[str]) -> frozenset[str]:
    if not isinstance(labels, frozenset) or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"labels must be a frozenset of non-empty strings, got {labels!r}")
    return labels


def _escape(label: str) -> str:
    return label.replace("\\", "\\\\").replace(";", "\\;")


def canonical(labels: frozenset[str]) -> str:
    """Sorted labels joined with ";", each label's "\\" and ";" escaped with
    "\\", so two different label sets never share a canonical form (the
    empty set is "", and empty labels are refused)."""
    return ";".join(_escape(x) for x in sorted(check_labels(labels)))


def labels_value(labels: frozenset[str]) -> bytes:
    """The value of id/<id>: a compact JSON list of the sorted labels."""
    return _b(json.dumps(sorted(check_labels(labels)), separators=(",", ":"), ensure_ascii=False))


def parse_labels_value(value: bytes) -> frozenset[str] | None:
    try:
        items = json.loads(value)
    except ValueError:
        return None
    if not isinstance(items, list) or not all(isinstance(x, str) and x for x in items):
        return None
    return frozenset(items)


# -- keys --------------------------------------------------------------------


def id_key(identity: int) -> bytes:
    return _b(f"{IDS}{identity}")


def labels_key(labels: frozenset[str]) -> bytes:
    return _b(LABELS + canonical(labels))


def ref_key(identity: int, node: str) -> bytes:
    return _b(f"{REFS}{identity}/{node}")


def node_key(node: str) -> bytes:
    return _b(NODES + node)


def ip_key(ip: IPv4Address | IPv6Address) -> bytes:
    return _b(f"{IPS}{ip}")


def prefix(p: str) -> bytes:
    return _b(p)


@dataclass(frozen=True)
class Key:
    """A parsed key: which kind and the parts its path carries."""

    kind: Literal["id", "labels", "ref", "node", "ip"]
    identity: int = 0
    node: str = ""
    ip: IPv4Address | IPv6Address | None = None


def _identity(text: str) -> int | None:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        return None
    n = int(text)
    return n if ID_MIN <= n <= ID_MAX else None


_node_name = TypeAdapter(NodeName)


def _node(text: str) -> str | None:
    try:
        return _node_name.validate_python(text)
    except ValidationError:
        return None


def parse_key(raw: bytes) -> Key | None:
    """A key under PREFIX -> Key, or None for a key this layout does not know."""
    try:
        key = raw.decode()
    except UnicodeDecodeError:
        return None
    if key.startswith(IDS):
        n = _identity(key[len(IDS) :])
        return None if n is None else Key("id", identity=n)
    if key.startswith(LABELS):
        return Key("labels")
    if key.startswith(REFS):
        ident, _, node = key[len(REFS) :].partition("/")
        n, name = _identity(ident), _node(node)
        return None if n is None or name is None else Key("ref", identity=n, node=name)
    if key.startswith(NODES):
        name = _node(key[len(NODES) :])
        return None if name is None else Key("node", node=name)
    if key.startswith(IPS):
        text = key[len(IPS) :]
        try:
            ip = ip_address(text)
        except ValueError:
            return None
        # One key per address: a non-canonical spelling ("fd00:0::5") is not ours.
        return Key("ip", ip=ip) if str(ip) == text else None
    return None


# -- values ------------------------------------------------------------------

_node_info = TypeAdapter(NodeInfo)


def node_value(node: NodeInfo) -> bytes:
    # Fields a node does not have (no IPv6) are left out: the record reads
    # the same to agents that predate them.
    return _node_info.dump_json(node, exclude_none=True)


def parse_node_value(value: bytes) -> NodeInfo | None:
    try:
        return _node_info.validate_json(value)
    except ValidationError:
        return None


class IpRecord(BaseModel):
    """The value of ip/<ip>: which identity, published by which node."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    identity: Identity
    node: NodeName
    named_ports: tuple[NamedPortRecord, ...] | None = None  # left out when empty: older agents read the record alike


def ip_value(identity: int, node: str, named_ports: tuple[tuple[str, int, int], ...] = ()) -> bytes:
    return IpRecord(identity=identity, node=node, named_ports=named_ports or None).model_dump_json(exclude_none=True).encode()


def parse_ip_value(ip: IPv4Address | IPv6Address, value: bytes) -> RemoteEndpoint | None:
    try:
        rec = IpRecord.model_validate_json(value)
    except ValidationError:
        return None
    return RemoteEndpoint(ip=ip, identity=rec.identity, node=rec.node, named_ports=rec.named_ports or ())


def identity_value(identity: int) -> bytes:
    """The value of labels/<canonical>: the id in decimal."""
    return _b(str(identity))


def parse_identity_value(value: bytes) -> int | None:
    try:
        return _identity(value.decode())
    except UnicodeDecodeError:
        return None
