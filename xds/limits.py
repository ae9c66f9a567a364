"""What any one pod can take of the sidecar Envoy, and of all of it. Pure.

The sidecar is shared by every endpoint on the node, so a pod that opens
thousands of connections (or holds them open with a slow body) must not
starve the others or grow Envoy without bound. Three layers:

- per listener: a proxy port serves one endpoint's one direction and port
  (policy/proxyports.py), so on an egress listener this is a per-pod cap,
  and on an ingress listener a per-server cap. Connections past it are
  closed at once by Envoy's connection_limit filter, before any HTTP.
- per connection: a buffer limit (flow control pauses reading past it) and
  a deadline for the request headers (slowloris).
- the whole Envoy (bootstrap's overload manager): a cap on downstream
  connections, and a heap limit under which Envoy shrinks its heap,
  shortens idle timeouts, resets the streams holding the most buffered
  memory, stops accepting connections and finally answers 503.

The defaults size a node with a few hundred pods: 2,048 connections per
listener are far above what one pod's normal traffic holds open, and at
about 40 KiB an idle proxied connection (measured), 16,384 in all fit the
1 GiB heap.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    connections_per_listener: int = 2048
    connections_total: int = 16384
    heap_bytes: int = 1 << 30
    connection_buffer_bytes: int = 128 * 1024
    request_headers_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"proxy limit {f.name} must be positive, not {getattr(self, f.name)!r}")
        if self.connections_per_listener > self.connections_total:
            raise ValueError(
                f"proxy limit connections_per_listener ({self.connections_per_listener}) is above "
                f"connections_total ({self.connections_total})"
            )
