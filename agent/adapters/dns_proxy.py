"""The agent's DNS proxy: where the kernel sends the DNS of every endpoint
with DNS rules (`toPorts[].rules.dns`), and where toFQDNs peers come from.

The datapath redirects the pod's UDP and TCP queries with bpf_sk_assign to
this proxy's transparent sockets on PROXY_ADDR:port in the node's netns
(bpf/lib/proxy.h); the packet keeps its original destination, which the
UDP socket reads from IP_RECVORIGDSTADDR and the TCP side from the accepted
socket's own address. For each query (dnsproxy/forwarder.py's Pipeline):
- the sender must be a local endpoint, and the endpoint's DNS rules for the
  resolver's identity and port (EndpointPolicy.dns_rules_for) must match
  the name, else the proxy answers REFUSED (or NXDOMAIN) itself;
- an allowed query goes to the original resolver from the node's own
  address (not the pod's: the resolver sees the node, as with Cilium's
  non-transparent DNS proxy), its answer is checked against the query;
- the answer's addresses are learned for the endpoint (dnsproxy/cache.py),
  the toFQDNs policies recompiled (Agent.fqdn_names_changed), and the
  answer released only once the kernel admits them or after
  `release_delay` (Cilium's --tofqdns-proxy-response-max-delay, 100 ms);
- an answer naming a cluster address (a pod, a node, the host) teaches
  nothing: a name never opens the cluster (policy/fqdn_peers.py);
- an address leaves when its TTL has passed and no live connection of the
  endpoint (conntrack, read only when something is due) still goes to it;
- the answer goes back from a transparent socket bound to the original
  destination, so the pod sees the resolver's address and port.

Who can reach it: the sockets are bound to PROXY_ADDR (127.0.0.1) in the
node netns, so only the node's own processes and redirected pod traffic
reach them; a query from an address that is not a local endpoint is
refused. The cache is written to STATE_DIR/fqdn-cache.json (root only,
the agent's umask) when an answer brings a new address, and within a second
of other answers (expiry times), and read back at start, so names resolved
before a restart stay admitted.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agent.core.models import FlowEvent, FQDNCacheEntry, FQDNCacheList
from dnsproxy.cache import DEFAULT_MAX_PER_NAME, Address, FQDNCache
from dnsproxy.forwarder import (
    Addr,
    DNSEvent,
    ForwarderConfig,
    Pipeline,
    TCPForwarder,
    Verdict,
    ask_udp,
)
from dnsproxy.messages import Answer, Query, Reject
from policy.compiled import DNS_PROXY_PORT, CompiledState
from policy.identity import FIRST_CIDR_IDENTITY, WORLD_IDENTITIES

if TYPE_CHECKING:
    from agent.core.agent import Agent

log = logging.getLogger(__name__)

IP_TRANSPARENT = 19
IP_RECVORIGDSTADDR = 20
IPV6_RECVORIGDSTADDR = 74
IPV6_TRANSPARENT = 75

CACHE_FILE = "fqdn-cache.json"
EXPIRY_INTERVAL = 1.0  # seconds between expiry passes
CT_READ_INTERVAL = 5.0  # seconds a conntrack read serves expiry passes (a full table is ~50 ms)


@dataclass(frozen=True)
class DNSProxyConfig:
    port: int = DNS_PROXY_PORT
    address: str = "127.0.0.1"
    reject: Reject = Reject.REFUSED  # --tofqdns-dns-reject-response-code
    min_ttl: int = 0  # --tofqdns-min-ttl
    max_per_name: int = DEFAULT_MAX_PER_NAME  # --tofqdns-endpoint-max-ip-per-hostname
    release_delay: float = 0.1  # --tofqdns-proxy-response-max-delay


def _address(a: str) -> IPv4Address | IPv6Address:
    return ip_address(a.split("%", 1)[0])


def orig_dst(ancillary: list[tuple[int, int, bytes]]) -> Addr | None:
    """The original destination from IP(V6)_RECVORIGDSTADDR's sockaddr."""
    for level, kind, raw in ancillary:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(raw) >= 8:
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack("!H", raw[2:4])[0]
        if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(raw) >= 24:
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]
    return None


def _transparent(family: int, kind: int) -> socket.socket:
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.setblocking(False)
    return s


class AnswerSockets:
    """Sockets bound (IP_TRANSPARENT) to resolvers' addresses and ports, to
    send each answer from the original destination, as the resolver's own
    would come. Kept, least recently used out past `size`: making one per
    answer was a tenth of the proxy's time at 1,000 queries/s. They are never
    read: only the kernel's redirect delivers to a resolver's address here,
    and it picks the proxy's own socket."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._socks: OrderedDict[Addr, socket.socket] = OrderedDict()

    def send(self, server: Addr, client: Addr, data: bytes) -> None:
        s = self._socks.get(server)
        if s is None:
            family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
            s = _transparent(family, socket.SOCK_DGRAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
                s.bind(server)
            except OSError:
                s.close()
                raise
            self._socks[server] = s
            if len(self._socks) > self.size:
                self._socks.popitem(last=False)[1].close()
        else:
            self._socks.move_to_end(server)
        s.sendto(data, client)

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()


class DNSProxy:
    """The dnsproxy Policy port over the agent's enforced state, and the
    proxy's sockets. Started and stopped with the agent (a Service)."""

    def __init__(self, agent: "Agent", config: DNSProxyConfig = DNSProxyConfig()) -> None:
        self.agent = agent
        self.config = config
        self.cache = FQDNCache(config.min_ttl, config.max_per_name)
        self._cache_path = agent.config.state_dir / CACHE_FILE
        fwd = ForwarderConfig(reject=config.reject, release_delay=config.release_delay)
        self.pipeline = Pipeline(self, self._event, fwd)
        self.tcp = TCPForwarder(self, self._event, fwd)
        self.tcp6 = TCPForwarder(self, self._event, fwd)
        self._udp: list[socket.socket] = []
        self._answers = AnswerSockets()
        self._pending: set[asyncio.Task] = set()
        self._expiry: asyncio.Task | None = None
        self._dirty = False  # learned since the cache file was written
        # Conntrack's live (source, destination) pairs and when they were read:
        # while a kept address's connection lives, a pass reuses them for
        # CT_READ_INTERVAL instead of reading the whole table every second.
        self._live: tuple[float, set[tuple[str, str]]] | None = None

    # -- lifecycle

    async def start(self) -> None:
        self.cache = load_cache(self._cache_path, self.config)
        # The agent read the same file before its first regeneration
        # (learned_names): this changes nothing unless it was written since.
        await self.agent.fqdn_names_changed(self.cache.names(), 5.0)
        self._gauges()
        await self._listen(socket.AF_INET, self.config.address, self.tcp)
        # IPv6 pods' queries come to ::1 (bpf/lib/proxy.h); a node without
        # IPv6 has no ::1, and its datapath drops every IPv6 packet anyway.
        try:
            await self._listen(socket.AF_INET6, "::1", self.tcp6)
        except OSError as e:
            log.info("DNS proxy: no IPv6 socket on [::1]:%d (%s); IPv4 only", self.config.port, e)
        self._expiry = asyncio.create_task(self._expire_loop(), name="ciliate-dns-expiry")
        log.info("DNS proxy listening on %s:%d (UDP, TCP)", self.config.address, self.config.port)

    async def _listen(self, family: int, address: str, tcp_forwarder: TCPForwarder) -> None:
        udp = _transparent(family, socket.SOCK_DGRAM)
        tcp = _transparent(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6:
                for sk in (udp, tcp):
                    sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                udp.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
            else:
                udp.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
            udp.bind((address, self.config.port))
            tcp.bind((address, self.config.port))
            tcp.listen(128)
        except OSError:
            udp.close()
            tcp.close()
            raise
        self._udp.append(udp)
        asyncio.get_running_loop().add_reader(udp.fileno(), self._readable, udp)
        await tcp_forwarder.start_on(tcp)

    async def stop(self) -> None:
        for udp in self._udp:
            asyncio.get_running_loop().remove_reader(udp.fileno())
            udp.close()
        self._udp.clear()
        self._answers.close()
        await self.tcp.stop()
        await self.tcp6.stop()
        tasks = [t for t in (self._expiry, *self._pending) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._save_cache()

    def _event(self, ev: DNSEvent) -> None:
        try:
            self._publish(ev)
        except Exception:  # monitor and metrics must not stop DNS
            log.exception("publishing a DNS event failed")

    def _publish(self, ev: DNSEvent) -> None:
        """Into `ciliate monitor` (type dns) and the metrics."""
        agent = self.agent
        agent.metrics.observe_dns(ev.verdict, ev.latency_s)
        verdict = {"allowed": "forwarded", "denied": "denied"}.get(ev.verdict, "dropped")
        addrs = ", ".join(ev.addresses)
        raw = {
            "type": "dns", "direction": "egress", "verdict": verdict, "protocol": ev.transport,
            "src_ip": ev.client[0], "src_port": ev.client[1], "dst_ip": ev.server[0], "dst_port": ev.server[1],
            "dns_name": ev.name or None, "dns_type": ev.qtype or None, "dns_rcode": ev.rcode or None,
            "dns_addresses": list(ev.addresses), "reason": ev.error or ev.rule or None,
            "summary": f"DNS {ev.qtype or '?'} {ev.name or '?'} {ev.verdict} -> {ev.rcode}" + (f" [{addrs}]" if addrs else ""),
        }
        try:
            data = agent.enricher.enrich(raw)
            data["endpoint_id"] = data.get("src_endpoint_id")
            event = FlowEvent.model_validate(data)
        except ValidationError as e:
            log.debug("dropping a malformed DNS flow event: %s", e)
            return
        agent.metrics.flow_events.labels("dns").inc()
        agent.flows.publish(event)

    def _gauges(self) -> None:
        names = self.cache.names()
        self.agent.metrics.fqdn_names.set(len(names))
        self.agent.metrics.fqdn_ips.set(len(set().union(*names.values())) if names else 0)

    # -- UDP

    def _readable(self, udp: socket.socket) -> None:
        for _ in range(64):  # then let the loop breathe
            try:
                data, anc, _flags, src = udp.recvmsg(65535, socket.CMSG_SPACE(64))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("DNS proxy: receive failed: %s", e)
                return
            local = orig_dst(anc)
            client: Addr = src[:2]
            if local is None:
                continue
            if len(self._pending) >= self.pipeline.config.max_pending:
                reply = self.pipeline.unparsed(data, client, local, "overload", 5)  # REFUSED
                self._reply(local, client, reply)
                continue
            task = asyncio.get_running_loop().create_task(self._handle_udp(data, client, local))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _handle_udp(self, data: bytes, client: Addr, local: Addr) -> None:
        self._reply(local, client, await self.pipeline.answer(data, client, local, ask_udp))

    def _reply(self, local: Addr, client: Addr, data: bytes | None) -> None:
        if data is None:
            return
        try:
            self._answers.send(local, client, data)
        except OSError as e:
            # EADDRINUSE: something in the node netns serves the resolver's own address.
            level = logging.DEBUG if e.errno == errno.ECONNREFUSED else logging.WARNING
            log.log(level, "DNS proxy: answer to %s:%d as %s:%d failed: %s", *client, *local, e)

    # -- the Policy port (dnsproxy.forwarder.Policy)

    def _state(self) -> CompiledState | None:
        return self.agent.enforced_state()

    def upstream(self, client: Addr, local: Addr) -> Addr:
        return local  # the original destination: the resolver the pod asked

    def decide(self, client: Addr, server: Addr, query: Query) -> Verdict:
        state = self._state()
        if state is None:
            return Verdict(False, "no policy in force yet")
        ep = state.endpoint_by_ip(_address(client[0]))
        if ep is None:
            return Verdict(False, "the sender is not a local endpoint")
        peer = state.identity_of(_address(server[0]))
        rules = ep.dns_rules_for(peer, server[1])
        for r in rules:
            assert r.dns is not None
            sel = r.dns.matches(query.name)
            if sel is not None:
                return Verdict(True, f"{r.rules[0] if r.rules else 'L4 allow'}: {sel}")
        if not rules:
            return Verdict(False, "no DNS rule covers this resolver and port")
        return Verdict(False, "no DNS rule matches the name")

    def in_cluster(self, state: CompiledState, addr: IPv4Address | IPv6Address) -> bool:
        ident = state.identity_of(addr)
        return ident not in WORLD_IDENTITIES and ident < FIRST_CIDR_IDENTITY

    async def learned(self, client: Addr, query: Query, answer: Answer) -> None:
        state = self._state()
        if state is None:
            return
        ep = state.endpoint_by_ip(_address(client[0]))
        if ep is None:
            return
        addrs = [(a, ttl) for a, ttl in answer.addresses if not self.in_cluster(state, a)]
        refused = len(answer.addresses) - len(addrs)
        if refused:
            log.warning("DNS answer for %s names %d cluster address(es): not admitted by name", query.name, refused)
        if not addrs:
            return
        added = self.cache.learn(ep.endpoint_id, answer.names, addrs, time.time())
        self._dirty = True  # expiry times moved: saved by the next expiry pass
        if not added:
            return  # nothing new to admit: a repeated answer costs no regeneration
        self._gauges()
        if not await self.agent.fqdn_names_changed(self.cache.names(), self.config.release_delay):
            log.debug("DNS answer for %s released before its addresses were admitted", query.name)
        # A new address is on disk at once (a crash right after must not lose
        # it); repeats only move expiry times and wait for the next pass.
        self._dirty = False
        self._save_cache()

    def listing(self) -> FQDNCacheList:
        now = time.time()
        return FQDNCacheList(running=True, entries=[
            FQDNCacheEntry(endpoint=e.endpoint_id, name=e.name, address=str(e.address), expires=e.expires,
                           ttl=max(0, int(e.expires - now)))
            for e in self.cache.entries(now)
        ])

    # -- expiry and restart

    async def _in_use(self, state: CompiledState | None, now: float) -> Callable[[int, Address], bool]:
        """Whether an endpoint still has a live connection to an address, for
        the addresses due to expire (read from conntrack only when some are)."""
        if state is None or not any(e.expired for e in self.cache.entries(now)):
            return lambda _e, _a: False
        if self._live is None or time.monotonic() - self._live[0] > CT_READ_INTERVAL:
            try:
                self._live = (time.monotonic(), await self.agent.datapath.connections())
            except Exception as e:  # keep them rather than cut on a failed read
                log.warning("DNS cache expiry: reading conntrack failed (%s); expired names kept for now", e)
                return lambda _e, _a: True
        live = self._live[1]
        sources: dict[int, tuple[str, ...]] = {
            eid: tuple(str(a) for a in (ep.ipv4, ep.ipv6) if a is not None) for eid, ep in state.endpoints.items()
        }
        return lambda eid, addr: any((src, str(addr)) in live for src in sources.get(eid, ()))

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL)
            state = self._state()
            now = time.time()
            changed = bool(self.cache.expire(now, await self._in_use(state, now)))
            if state is not None:
                for eid in {e.endpoint_id for e in self.cache.entries(time.time())} - set(state.endpoints):
                    changed |= bool(self.cache.forget_endpoint(eid))
            if changed:
                self._gauges()
                await self.agent.fqdn_names_changed(self.cache.names(), 5.0)
            if changed or self._dirty:
                self._dirty = False
                self._save_cache()

    def _save_cache(self) -> None:
        tmp = self._cache_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.cache.to_json()))
            tmp.replace(self._cache_path)
        except OSError as e:
            log.warning("could not write the DNS cache %s: %s", self._cache_path, e)


def load_cache(path: Path, config: DNSProxyConfig) -> FQDNCache:
    """The cache a previous run saved; empty (with a warning naming the file
    and why) when there is none or it does not read."""
    empty = FQDNCache(config.min_ttl, config.max_per_name)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return empty
    except (OSError, ValueError) as e:
        log.warning("ignoring the DNS cache %s: %s", path, e)
        return empty
    try:
        return FQDNCache.from_json(doc, config.min_ttl, config.max_per_name)
    except ValueError as e:
        log.warning("ignoring the DNS cache %s: %s", path, e)
        return empty


def learned_names(state_dir: Path, config: DNSProxyConfig = DNSProxyConfig()) -> Callable[[], dict]:
    """For Agent(learned_names=...): the names saved by the last run."""
    return lambda: load_cache(state_dir / CACHE_FILE, config).names()


def dns_proxy_service(config: DNSProxyConfig = DNSProxyConfig()) -> Callable[["Agent"], DNSProxy]:
    """A service factory for build_agent: the DNS proxy of that agent."""
    def make(agent: "Agent") -> DNSProxy:
        proxy = DNSProxy(agent, config)
        agent.dns_proxy = proxy
        return proxy
    return make
