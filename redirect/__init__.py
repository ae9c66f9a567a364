"""redirect: the kernel side. Loads bpf/ programs with bcc, writes pinned maps
from the compiled state, attaches tc programs and sets up proxy plumbing.

Does kernel I/O (bpf(), bcc, netlink) in its modules; importing the package
itself only pulls in the pure layout/policy-map code. Public API:

    redirect.datapath.Datapath       the facade the agent drives
    redirect.reconcile.ApplyResult   what apply() did, per-endpoint failures
    redirect.events.FlowEvent        one verdict from the kernel
    redirect.policymap.DecodedEntry  one policy map entry (bpf policy get)
    redirect.maps.MapSizes           capacities of the pinned maps
    redirect.errors                  DatapathError and its subclasses
    redirect.proxy_route.to_proxy_mark     skb->mark of a flow sent to a proxy port

Design notes (datapath behaviour a user sees) are in bpf/README.md.
"""

from redirect.errors import (
    AttachError,
    DatapathError,
    MapFullError,
    PlumbingError,
    ProgramLoadError,
)

__all__ = ["AttachError", "DatapathError", "MapFullError", "PlumbingError", "ProgramLoadError"]
