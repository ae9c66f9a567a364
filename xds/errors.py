"""Every error the xds/ package raises, in one place. No I/O.

XdsError
 +-- RenderError        the compiled state cannot be expressed as Envoy config
 +-- SnapshotError      a snapshot is inconsistent (dangling reference, duplicate name)
 +-- NackError          Envoy rejected a version; carries Envoy's error_detail
 +-- AckTimeout         Envoy did not acknowledge a version in time
"""

from __future__ import annotations


class XdsError(Exception):
    """Base of every xds/ error."""


class RenderError(XdsError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class SnapshotError(XdsError):
    pass


class NackError(XdsError):
    """Envoy rejected a configuration; the last acknowledged one stays in force."""

    def __init__(self, detail: str, type_url: str, resource_names: tuple[str, ...] = (), version: str = "") -> None:
        names = ", ".join(resource_names) or "-"
        super().__init__(f"Envoy rejected {type_url.rsplit('.', 1)[-1]} [{names}] version {version!r}: {detail}")
        self.detail = detail
        self.type_url = type_url
        self.resource_names = tuple(resource_names)
        self.version = version


class AckTimeout(XdsError, TimeoutError):
    pass
