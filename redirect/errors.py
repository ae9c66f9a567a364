"""The redirect/ error hierarchy, in one place. Pure.

    DatapathError
      ProgramLoadError   an endpoint program did not compile or load; the
                         endpoint is left blocked (fail closed)
      MapFullError       desired entries exceed a map's capacity; the old
                         entries stay enforced
      AttachError        tc / netlink refused an attach or detach
      PlumbingError      ip rule / route set-up for the proxy failed
      bpfsys.BPFError    a bpf() system call failed (also an OSError)
"""

from __future__ import annotations


class DatapathError(Exception):
    """Base of every error redirect/ raises on purpose."""


class ProgramLoadError(DatapathError):
    def __init__(self, endpoint_id: int, message: str) -> None:
        super().__init__(f"endpoint {endpoint_id}: program load failed (endpoint blocked): {message}")
        self.endpoint_id = endpoint_id
        self.message = message


class MapFullError(DatapathError):
    # The message does not name the endpoint: a per-endpoint failure is
    # reported keyed by `endpoint_id`, and whoever shows it adds the endpoint
    # once (a prefix here made "endpoint 1: endpoint 1:" in policy status).
    def __init__(self, map_name: str, wanted: int, capacity: int, endpoint_id: int | None = None) -> None:
        super().__init__(
            f"{map_name} would hold {wanted} entries but its capacity is {capacity} "
            "(a port range takes one entry per aligned power-of-two block); kept the previous entries enforced"
        )
        self.map_name = map_name
        self.wanted = wanted
        self.capacity = capacity
        self.endpoint_id = endpoint_id


class AttachError(DatapathError):
    pass


class PlumbingError(DatapathError):
    pass
