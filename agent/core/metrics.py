"""Prometheus metrics of the agent, in a registry of its own (so tests can run many agents).

Served by agent/api/server.py on a loopback TCP port; the names follow Cilium's
where one exists. Counters and gauges are moved where the state changes (the
agent core after a policy file read, a regeneration or a flow event), never by
a read of the API. Policies by status is the one exception: it is a function of
the whole state (policy book, endpoints, last regeneration) that costs a pass
over every policy and endpoint, so it is computed when Prometheus scrapes, not
after every regeneration. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

POLICY_STATES = ("enforced", "pending", "not-enforced", "error")


class _PoliciesByState:
    """The ciliate_policies gauge, read from the agent at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("ciliate_policies", "Policies by status", labels=["state"])
        counts = self._counts()
        for state in POLICY_STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family


class AgentMetrics:
    def __init__(self, policy_counts: Callable[[], Mapping[str, int]] | None = None) -> None:
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
        if policy_counts is not None:
            r.register(_PoliciesByState(policy_counts))
        self.policy_file_reloads = Counter("ciliate_policy_file_reloads", "Policy files read, by outcome", ["outcome"], registry=r)
        self.flow_events = Counter("ciliate_flow_events", "Flow events forwarded to monitor clients", ["type"], registry=r)
        self.proxy_publishes = Counter(
            "ciliate_proxy_publishes", "Publishes of a new L7 configuration to Envoy, by outcome (acked, rejected, timeout)", ["outcome"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
