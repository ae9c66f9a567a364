"""TLS server names (Cilium's `toPorts[].serverNames`): what a valid one is.

A name is matched against the SNI of a connection's ClientHello, which the
proxy reads without terminating TLS. SNI is case-insensitive, so names are
lower-cased here once. As in Cilium, the leftmost label may be a wildcard
(`*.example.com`, `**.example.com`; policy/server_names.py says what they
match). Pure.
"""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Annotated, Any

from pydantic import PlainValidator

from policy.api.problems import fail, type_name
from policy.server_names import WILDCARD_MANY, WILDCARD_ONE

_MAX_NAME = 253  # RFC 1035, without the trailing dot
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _server_name(v: Any) -> str:
    if not isinstance(v, str):
        fail(f"must be a string, got {type_name(v)}")
    if v == "":
        fail("empty server name is not allowed")
    name = v.lower()
    if name.endswith("."):
        fail(f"server name {v!r} ends with a dot: SNI never carries the trailing dot, leave it out")
    if len(name) > _MAX_NAME:
        fail(f"server name is {len(name)} characters long, at most {_MAX_NAME} allowed")
    try:
        ip_address(name)
    except ValueError:
        pass
    else:
        fail(f"{v!r} is an IP address: TLS clients send no server name for an address (RFC 6066)")
    labels = name.split(".")
    if labels[0] in (WILDCARD_ONE, WILDCARD_MANY):
        labels = labels[1:]
        if not labels:
            fail(f"wildcard {v!r} needs a domain after it, like *.example.com")
    for label in labels:
        if "*" in label:
            fail(f"bad server name {v!r}: a wildcard must be the whole leftmost label, "
                 "*.example.com (one label) or **.example.com (one or more)")
        if not _LABEL.fullmatch(label):
            fail(f"bad server name {v!r}: label {label!r} must be 1-63 letters, digits, '-' or '_' "
                 "(internationalized names in their xn-- form)")
    return name


ServerName = Annotated[str, PlainValidator(_server_name)]
