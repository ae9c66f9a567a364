"""One DNS query from inside a pod (run with `ip netns exec`): prints one
JSON line {"rcode", "addresses", "ttl"} or {"error"}."""

from __future__ import annotations

import argparse
import json

import dns.exception
import dns.message
import dns.query
import dns.rcode


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("server")
    p.add_argument("name")
    p.add_argument("--type", default="A")
    p.add_argument("--tcp", action="store_true")
    p.add_argument("--timeout", type=float, default=3.0)
    a = p.parse_args()
    q = dns.message.make_query(a.name, a.type)
    try:
        r = (dns.query.tcp if a.tcp else dns.query.udp)(q, a.server, timeout=a.timeout)
    except (dns.exception.DNSException, OSError) as e:
        print(json.dumps({"error": type(e).__name__, "detail": str(e)}))
        return
    addrs = [item.address for rrset in r.answer for item in rrset if hasattr(item, "address")]
    ttls = [rrset.ttl for rrset in r.answer]
    print(json.dumps({"rcode": dns.rcode.to_text(r.rcode()), "addresses": addrs, "ttl": min(ttls) if ttls else None}))


if __name__ == "__main__":
    main()
