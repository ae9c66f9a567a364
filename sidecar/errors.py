"""The sidecar's error: Envoy could not be started, became unready, or was
given a bootstrap it cannot use. No I/O."""

from __future__ import annotations


class EnvoyError(Exception):
    """The sidecar Envoy could not be started, became unready, or its bootstrap is unusable."""
