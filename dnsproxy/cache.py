"""What the node's pods learned from DNS: per endpoint, each name's addresses
and until when they hold (Cilium's DNS cache behind toFQDNs). Pure: the
caller passes the time and says which addresses live connections still use.

- An address holds for its record's TTL, at least `min_ttl` seconds
  (Cilium's --tofqdns-min-ttl; 0: the TTL as given).
- A name keeps at most `max_per_name` addresses per endpoint (Cilium's
  --tofqdns-endpoint-max-ip-per-hostname): past it, the ones closest to
  expiry go first, so a resolver answering with ever new addresses cannot
  grow the cache without bound.
- Expiry: an address whose time has passed leaves, unless `in_use` says a
  connection still uses it; then it stays until that connection is gone
  (live connections survive expiry).
- Times are wall-clock seconds, so the cache survives an agent restart
  (to_json / from_json); entries that expired while the agent was down go
  at the first expiry pass, subject to `in_use` like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from policy.dns_names import canonical

Address = IPv4Address | IPv6Address
InUse = Callable[[int, Address], bool]

DEFAULT_MAX_PER_NAME = 1000


@dataclass(frozen=True, slots=True)
class CacheEntry:
    endpoint_id: int
    name: str
    address: Address
    expires: float  # wall-clock seconds
    expired: bool = False  # past its time, kept for a live connection


class FQDNCache:
    def __init__(self, min_ttl: int = 0, max_per_name: int = DEFAULT_MAX_PER_NAME) -> None:
        if min_ttl < 0 or max_per_name < 1:
            raise ValueError("min_ttl must be >= 0 and max_per_name >= 1")
        self.min_ttl = min_ttl
        self.max_per_name = max_per_name
        # (endpoint, name) -> address -> expiry
        self._entries: dict[tuple[int, str], dict[Address, float]] = {}

    def learn(self, endpoint_id: int, names: Iterable[str], addresses: Iterable[tuple[Address, int]], now: float) -> set[Address]:
        """Record that `endpoint_id` resolved `names` (a name and its CNAME
        chain) to `addresses` (address, TTL). Returns the addresses that are
        new for any of the names (the ones the policy must now admit)."""
        added: set[Address] = set()
        addrs = list(addresses)
        for name in dict.fromkeys(canonical(n) for n in names):
            held = self._entries.setdefault((endpoint_id, name), {})
            new = {a for a, _ in addrs if a not in held}
            for addr, ttl in addrs:
                until = now + max(int(ttl), self.min_ttl)
                held[addr] = max(held.get(addr, until), until)
            if len(held) > self.max_per_name:
                for addr in sorted(held, key=held.__getitem__)[: len(held) - self.max_per_name]:
                    del held[addr]
            added |= new & held.keys()
        return added

    def expire(self, now: float, in_use: InUse = lambda _e, _a: False) -> set[Address]:
        """Drop what has expired and no connection uses; returns addresses
        no name of any endpoint holds any longer."""
        gone: set[Address] = set()
        for key in list(self._entries):
            held = self._entries[key]
            for addr in [a for a, t in held.items() if t <= now and not in_use(key[0], a)]:
                del held[addr]
                gone.add(addr)
            if not held:
                del self._entries[key]
        return gone - self.addresses()

    def forget_endpoint(self, endpoint_id: int) -> set[Address]:
        """The endpoint is gone: its names go with it. Returns addresses no
        other endpoint holds."""
        gone: set[Address] = set()
        for key in [k for k in self._entries if k[0] == endpoint_id]:
            gone |= self._entries.pop(key).keys()
        return gone - self.addresses()

    def addresses(self, names: Callable[[str], bool] = lambda _n: True, endpoint_id: int | None = None) -> set[Address]:
        """Addresses of the names `names` accepts (e.g. a toFQDNs selector's
        match), of one endpoint or of all."""
        out: set[Address] = set()
        for (eid, name), held in self._entries.items():
            if (endpoint_id is None or eid == endpoint_id) and names(name):
                out |= held.keys()
        return out

    def names(self) -> dict[str, frozenset[Address]]:
        """name -> every endpoint's addresses for it: what toFQDNs selectors
        select from (a name one pod resolved is selectable for all, as in
        Cilium)."""
        out: dict[str, set[Address]] = {}
        for (_eid, name), held in self._entries.items():
            out.setdefault(name, set()).update(held)
        return {n: frozenset(a) for n, a in out.items()}

    def entries(self, now: float) -> Iterator[CacheEntry]:
        for (eid, name), held in sorted(self._entries.items()):
            for addr, t in sorted(held.items(), key=lambda kv: (kv[0].version, int(kv[0]))):
                yield CacheEntry(eid, name, addr, t, expired=t <= now)

    def __len__(self) -> int:
        return sum(len(h) for h in self._entries.values())

    # -- restart

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "entries": [
                {"endpoint": eid, "name": name, "addresses": {str(a): t for a, t in held.items()}}
                for (eid, name), held in sorted(self._entries.items())
            ],
        }

    @classmethod
    def from_json(cls, doc: Any, min_ttl: int = 0, max_per_name: int = DEFAULT_MAX_PER_NAME) -> "FQDNCache":
        """A cache from to_json's output; anything malformed raises ValueError
        naming the entry (the caller reports it and starts empty)."""
        cache = cls(min_ttl, max_per_name)
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("entries"), list):
            raise ValueError("not a version-1 FQDN cache document")
        for i, e in enumerate(doc["entries"]):
            try:
                eid, name, addrs = int(e["endpoint"]), canonical(str(e["name"])), e["addresses"]
                held = {ip_address(a): float(t) for a, t in addrs.items()}
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"entries[{i}]: {exc}") from exc
            cache._entries.setdefault((eid, name), {}).update(held)
        return cache
