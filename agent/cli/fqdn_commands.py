"""`ciliate fqdn cache list` (Cilium: `cilium-dbg fqdn cache list`): the
names the endpoints resolved through the agent's DNS proxy, with their
addresses, TTLs and endpoints."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", common: argparse.ArgumentParser,
             client_command: Callable[..., Any], emit: Callable[..., int], table: Callable[..., str]) -> None:
    """Add `fqdn cache list`; the client plumbing is agent_commands' own."""

    def cache_list(client: Any, args: argparse.Namespace) -> int:
        def human(v: Any) -> str:
            if not v.running:
                return "the DNS proxy is off (--no-dns-proxy): nothing is learned"
            return table(["ENDPOINT", "NAME", "ADDRESS", "TTL", "EXPIRES"],
                         [(e.endpoint, e.name, e.address, e.ttl,
                           time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.expires))) for e in v.entries])
        return emit(args, client.fqdn_cache(), human)

    f = sub.add_parser("fqdn", help="names the endpoints resolved through the DNS proxy (toFQDNs)")
    fsub = f.add_subparsers(dest="fqdn_command", metavar="SUBCOMMAND", required=True)
    fc = fsub.add_parser("cache", help="the DNS proxy's cache")
    fcsub = fc.add_subparsers(dest="fqdn_cache_command", metavar="SUBCOMMAND", required=True)
    fcl = fcsub.add_parser("list", parents=[common], help="names, addresses, TTLs and endpoints (cilium-dbg fqdn cache list)")
    fcl.set_defaults(func=client_command(cache_list))
