"""Prometheus metrics of the agent, in a registry of its own (so tests can run many agents).

Served by agent/api/server.py on a loopback TCP port. Names and labels follow
Cilium's (`cilium_drop_count_total` is `ciliate_drop_count_total` here, ...)
and Prometheus' conventions (counters end in `_total`, durations in seconds);
README.md's "Metrics" section lists every one. No I/O here.

Two kinds of sources:
- moved where the state changes (the agent core after a policy file read, a
  regeneration or a flow event), never by a read of the API;
- read when Prometheus scrapes: what lives elsewhere and is only worth
  reading when asked. The kernel's verdict counters and map fill (the agent
  fetches them through the datapath port right before rendering, see
  `Agent.scrape`), the xDS and Envoy totals (proxy port), the kvstore's and
  the Kubernetes source's counts (their status/health mappings), and
  functions of the whole state (policies and endpoints by state, identities
  by type).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.core.ports import DatapathCounters, ProxyCounters
from policy.features import FEATURES

POLICY_STATES = ("enforced", "pending", "not-enforced", "error")
ENDPOINT_STATES = ("waiting-for-identity", "regenerating", "ready", "not-ready")
IDENTITY_TYPES = ("reserved", "endpoint", "cidr")
L7_RULES = ("received", "forwarded", "denied", "audited")
# Seconds; policy changes are compiled, pushed to Envoy (ACK) and written to
# the kernel, from milliseconds for a small change to many seconds for 20k CIDRs.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

Counts = Callable[[], Mapping[str, int]]


def _zero() -> Mapping[str, int]:
    return {}


class _ScrapeTime:
    """Families computed from the agent's state and the last port readings, at scrape time."""

    def __init__(self, owner: "AgentMetrics") -> None:
        self._m = owner

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield _by_state("ciliate_policies", "Policies by status", "state", POLICY_STATES, m.policy_counts())
        yield _by_state(
            "ciliate_policy_rules", "Rules in force using each part of the policy language", "feature", FEATURES, m.rule_features()
        )
        states = m.endpoint_counts()
        yield _by_state("ciliate_endpoint_state", "Endpoints by state", "endpoint_state", ENDPOINT_STATES, states)
        total = GaugeMetricFamily("ciliate_endpoint", "Endpoints managed by this agent")
        total.add_metric([], sum(states.values()))
        yield total
        yield _by_state("ciliate_identity", "Identities allocated, by type", "type", IDENTITY_TYPES, m.identity_counts())
        yield from _kernel(m.datapath)
        yield from _proxy(m.proxy)
        if m.kvstore is not None:
            yield from _cluster(m.kvstore())
        if m.kubernetes is not None:
            yield from _kubernetes(m.kubernetes())


def _kubernetes(st: Mapping[str, object]) -> Iterator[Metric]:
    """Kubernetes mode: what the API source counted (its health() fields)."""
    dropped = CounterMetricFamily(
        "ciliate_pod_labels_dropped",
        "Pod labels not taken as endpoint labels because only the agent sets them (the namespace, keys starting "
        "with io.cilium.k8s, keys with a source or outside label syntax), once per Pod version",
    )
    value = st.get("pod_labels_dropped")
    dropped.add_metric([], float(value) if isinstance(value, (int, float)) else 0.0)
    yield dropped


def _cluster(st: Mapping[str, object]) -> Iterator[Metric]:
    """Cluster mode: the shared store's reachability and what this node follows."""
    up = GaugeMetricFamily("ciliate_kvstore_connected", "1 while the kvstore (etcd) is reachable, else 0")
    up.add_metric([], 1 if st.get("ok") else 0)
    yield up
    for name, key, doc in (
        ("ciliate_nodes_remote", "remote_nodes", "Other nodes of the cluster this node routes to"),
        ("ciliate_endpoints_remote", "remote_endpoints", "Other nodes' endpoints in this node's ipcache"),
        ("ciliate_kvstore_refused_entries", "refused_entries", "kvstore entries ignored as implausible (overlapping pod CIDRs, addresses outside their node's CIDR)"),
    ):
        g = GaugeMetricFamily(name, doc)
        value = st.get(key)
        g.add_metric([], float(value) if isinstance(value, (int, float)) else 0.0)
        yield g


def _by_state(name: str, doc: str, label: str, known: tuple[str, ...], counts: Mapping[str, int]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for state in dict.fromkeys((*known, *sorted(counts))):
        family.add_metric([state], counts.get(state, 0))
    return family


def _kernel(c: DatapathCounters) -> Iterator[Metric]:
    drops = CounterMetricFamily(
        "ciliate_drop_count", "Packets dropped by the datapath, by reason and policy direction (kernel per-CPU counters)",
        labels=["reason", "direction"],
    )
    forwards = CounterMetricFamily(
        "ciliate_forward_count",
        "New flows forwarded by the datapath (to the peer or to the proxy), by reason and policy direction "
        "(kernel per-CPU counters; established traffic is not counted)",
        labels=["reason", "direction"],
    )
    audits = CounterMetricFamily(
        "ciliate_policy_audit_count",
        "New flows policy would have dropped, passed by policy audit mode, by the reason they would have been "
        "dropped and policy direction (kernel per-CPU counters)",
        labels=["reason", "direction"],
    )
    family = {"drop": drops, "audit": audits}
    summed: dict[tuple[str, str, str], int] = {}
    for v in c.verdicts:
        key = (v.verdict if v.verdict in family else "forward", v.reason, v.direction)
        summed[key] = summed.get(key, 0) + v.packets
    for (verdict, reason, direction), packets in sorted(summed.items()):
        family.get(verdict, forwards).add_metric([reason, direction], packets)
    yield drops
    yield forwards
    yield audits
    pressure = GaugeMetricFamily("ciliate_bpf_map_pressure", "Fill of each bpf map: entries / capacity", labels=["map_name"])
    for f in sorted(c.maps, key=lambda f: f.name):
        pressure.add_metric([f.name], f.entries / f.capacity if f.capacity else 0.0)
    yield pressure
    if c.upstream_ports is not None and c.upstream_ports.by_datapath:
        u = c.upstream_ports
        yield CounterMetricFamily(
            "ciliate_proxy_upstream_ports_assigned", "Proxy upstream connections that keep the client's address, "
            "given a source port from --proxy-upstream-ports by the datapath", value=u.assigned,
        )
        yield CounterMetricFamily(
            "ciliate_proxy_upstream_ports_exhausted", "Proxy upstream connects refused: no port of "
            "--proxy-upstream-ports free for that client and server", value=u.exhausted,
        )
        yield CounterMetricFamily(
            "ciliate_proxy_upstream_port_probes_busy", "Ports the datapath probed and skipped for a proxy upstream "
            "(4-tuple taken, just claimed, or bound by another socket)", value=u.busy,
        )


def _proxy(c: ProxyCounters) -> Iterator[Metric]:
    for name, doc, values in (
        ("ciliate_xds_pushes", "xDS responses sent to Envoy, by type URL", c.xds_pushes),
        ("ciliate_xds_acks", "xDS responses Envoy acknowledged, by type URL", c.xds_acks),
        ("ciliate_xds_nacks", "xDS responses Envoy rejected (NACK), by type URL", c.xds_nacks),
    ):
        family = CounterMetricFamily(name, doc, labels=["type_url"])
        for url, n in sorted(values.items()):
            family.add_metric([url], n)
        yield family
    restarts = CounterMetricFamily("ciliate_envoy_restarts", "Restarts of the sidecar Envoy (exits and repairs)")
    restarts.add_metric([], c.envoy_restarts)
    yield restarts


class AgentMetrics:
    def __init__(
        self,
        policy_counts: Counts | None = None,
        rule_features: Counts | None = None,
        endpoint_counts: Counts | None = None,
        identity_counts: Counts | None = None,
        kvstore: Callable[[], Mapping[str, object]] | None = None,
        kubernetes: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        self.policy_counts = policy_counts or _zero
        self.rule_features = rule_features or _zero
        self.kvstore = kvstore  # cluster mode: the shared store's status
        self.kubernetes = kubernetes  # Kubernetes mode: the API source's health
        self.endpoint_counts = endpoint_counts or _zero
        self.identity_counts = identity_counts or _zero
        # The last readings of the ports, refreshed by Agent.scrape().
        self.datapath = DatapathCounters()
        self.proxy = ProxyCounters()
        self.registry = CollectorRegistry()
        r = self.registry
        self.regenerations = Counter("ciliate_endpoint_regenerations", "Endpoint regenerations by outcome", ["outcome"], registry=r)
        self.regeneration_seconds = Histogram(
            "ciliate_endpoint_regeneration_time_stats_seconds",
            "Time of one regeneration batch (compile, Envoy ACK, kernel write), by scope",
            ["scope"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.policy_revision = Gauge("ciliate_policy_max_revision", "Policy revision the datapath enforces", registry=r)
        self.policy_changes = Counter(
            "ciliate_policy_change", "Policy file changes (new, changed or removed files) by outcome", ["outcome"], registry=r
        )
        self.policy_import_errors = Counter(
            "ciliate_policy_import_errors", "Policies or policy files refused (validation or compiler)", registry=r
        )
        self.policy_delay = Histogram(
            "ciliate_policy_implementation_delay_seconds",
            "From a policy change being seen to the regeneration that enforces it (Envoy ACK and kernel write)",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.flow_events = Counter("ciliate_flow_events", "Flow events forwarded to monitor clients", ["type"], registry=r)
        self.policy_l7 = Counter(
            "ciliate_policy_l7",
            "L7 requests seen by the proxy, by rule outcome (received, forwarded, denied, audited: would have been denied)",
            ["rule", "proxy_type"], registry=r,
        )
        self.proxy_publishes = Counter(
            "ciliate_proxy_publishes", "Publishes of a new L7 configuration to Envoy, by outcome (acked, rejected, timeout)", ["outcome"], registry=r
        )
        self.dns_reply = Histogram(
            "ciliate_proxy_upstream_reply_seconds",
            "DNS proxy: from a query to the answer the pod gets (resolver, learning, kernel write), by outcome",
            ["outcome"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.fqdn_names = Gauge("ciliate_fqdn_active_names", "Names the DNS proxy holds addresses for (all endpoints)", registry=r)
        self.fqdn_ips = Gauge("ciliate_fqdn_active_ips", "Addresses toFQDNs selectors may select (all names)", registry=r)
        for proxy_type in ("http", "dns"):
            for rule in L7_RULES:  # present from the start, so rate() sees the first request
                self.policy_l7.labels(rule, proxy_type)
        r.register(_ScrapeTime(self))

    def observe_l7(self, verdict: str | None) -> None:
        self.policy_l7.labels("received", "http").inc()
        rule = {"denied": "denied", "audit": "audited"}.get(verdict or "", "forwarded")
        self.policy_l7.labels(rule, "http").inc()

    def observe_dns(self, outcome: str, seconds: float) -> None:
        """One query the DNS proxy answered: allowed, denied, malformed or overload."""
        self.policy_l7.labels("received", "dns").inc()
        self.policy_l7.labels("forwarded" if outcome == "allowed" else "denied", "dns").inc()
        self.dns_reply.labels(outcome).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
