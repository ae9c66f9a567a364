"""`ciliate agent`'s DNS proxy flags (Cilium's names) and the config they make."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dnsproxy.cache import DEFAULT_MAX_PER_NAME

if TYPE_CHECKING:
    from agent.adapters.dns_proxy import DNSProxyConfig

# Imported when the agent starts, not for every `ciliate` command (dnspython).
_REJECT = ("nameError", "refused")


def add_dns_flags(a: argparse.ArgumentParser) -> None:
    a.add_argument(
        "--no-dns-proxy", action="store_true",
        help="do not run the DNS proxy: DNS rules then drop the queries they redirect, toFQDNs selects nothing",
    )
    a.add_argument(
        "--tofqdns-dns-reject-response-code", default="refused", choices=_REJECT,
        help="the answer to a query no DNS rule allows (default %(default)s)",
    )
    a.add_argument(
        "--tofqdns-min-ttl", type=int, default=0, metavar="SECONDS",
        help="the least time a learned address stays admitted, whatever its TTL (default %(default)s: the TTL)",
    )
    a.add_argument(
        "--tofqdns-endpoint-max-ip-per-hostname", type=int, default=DEFAULT_MAX_PER_NAME, metavar="N",
        help="addresses one endpoint may hold per name; past it the closest to expiry go (default %(default)s)",
    )
    a.add_argument(
        "--tofqdns-proxy-response-max-delay", type=float, default=0.1, metavar="SECONDS",
        help="how long an answer waits for the datapath to admit its addresses before it is released anyway "
        "(default %(default)s)",
    )


def dns_proxy_from_args(args: argparse.Namespace) -> "DNSProxyConfig | None":
    """None with --no-dns-proxy; ValueError (naming the flag) for a bad value."""
    from agent.adapters.dns_proxy import DNSProxyConfig
    from dnsproxy.messages import Reject
    if args.no_dns_proxy:
        return None
    if args.tofqdns_min_ttl < 0:
        raise ValueError(f"--tofqdns-min-ttl must be 0 or more, not {args.tofqdns_min_ttl}")
    if args.tofqdns_endpoint_max_ip_per_hostname < 1:
        raise ValueError(f"--tofqdns-endpoint-max-ip-per-hostname must be 1 or more, not {args.tofqdns_endpoint_max_ip_per_hostname}")
    if not 0 <= args.tofqdns_proxy_response_max_delay <= 10:
        raise ValueError(f"--tofqdns-proxy-response-max-delay must be 0-10 seconds, not {args.tofqdns_proxy_response_max_delay}")
    return DNSProxyConfig(
        reject=Reject.NAME_ERROR if args.tofqdns_dns_reject_response_code == "nameError" else Reject.REFUSED,
        min_ttl=args.tofqdns_min_ttl,
        max_per_name=args.tofqdns_endpoint_max_ip_per_hostname,
        release_delay=args.tofqdns_proxy_response_max_delay,
    )
