"""The one definition of "on loopback" for the sockets the control plane
and its Envoy talk over when they are not unix sockets (tests, the compose
demo): xDS, the access log service, Envoy's bootstrap endpoints. No I/O."""

from __future__ import annotations

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def require_loopback(host: str, what: str, error: type[Exception]) -> None:
    """Raise `error` naming `what` unless `host` is a loopback address."""
    if host not in LOOPBACK_HOSTS:
        raise error(f"{what} must be on loopback, not {host!r}")
