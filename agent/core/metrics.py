"""Prometheus metrics of the agent, in a registry of its own (so tests can run many agents).

Served by agent/api/server.py on a loopback TCP port; the names follow Cilium's where
one exists. No I/O here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.regenerations = Counter("ciliate_endpoint_regenerations", "Endpoint regenerations by outcome", ["outcome"], registry=r)
        self.regeneration_seconds = Histogram(
            "ciliate_regeneration_seconds",
            "Time of one regeneration batch: compile, Envoy ACK, kernel write",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.policy_revision = Gauge("ciliate_policy_revision", "Policy revision the datapath enforces", registry=r)
        self.endpoints = Gauge("ciliate_endpoints", "Endpoints by state", ["state"], registry=r)
        self.policies = Gauge("ciliate_policies", "Policies by status", ["state"], registry=r)
        self.policy_file_reloads = Counter("ciliate_policy_file_reloads", "Policy files read, by outcome", ["outcome"], registry=r)
        self.flow_events = Counter("ciliate_flow_events", "Flow events forwarded to monitor clients", ["type"], registry=r)
        self.proxy_publishes = Counter("ciliate_proxy_publishes", "xDS snapshot publishes by outcome", ["outcome"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
