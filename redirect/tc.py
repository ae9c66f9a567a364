"""tc clsact attach and detach on an endpoint's host-side veth (pyroute2).

Does I/O (netlink). Idempotent: an existing clsact qdisc is adopted (adding
it again fails with EEXIST), filters are written with `replace` on a fixed
prio/handle, so re-attaching swaps the program atomically without a window
in which no program runs. The filter name records which program it is
(`ciliate_lxc_<build hash>`, shared by every endpoint, or `ciliate_block`), which is how a
restarted process tells whether the attached program is current.
"""

from __future__ import annotations

import contextlib
import errno
from dataclasses import dataclass
from typing import Union

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from redirect.errors import AttachError

INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS): packets from the pod
EGRESS = 0xFFFFFFF3  # packets to the pod
PRIO = 1
HANDLE = 1


@dataclass(frozen=True)
class Attached:
    ingress: str | None  # filter names
    egress: str | None


# Where a call works: a netns name, None (this process's netns), or a socket
# session() opened for several calls. Opening one costs a netlink socket, and
# in a named netns pyroute2 forks a helper to make it (~13 ms): an endpoint
# attach made three.
Netns = Union[str, None, IPRoute]


def session(netns: Netns = None) -> IPRoute:
    """One netlink socket for several calls (`with tc.session(ns) as s:`)."""
    return IPRoute(netns=netns) if netns else IPRoute()


def _ipr(netns: Netns) -> "contextlib.AbstractContextManager[IPRoute]":
    if isinstance(netns, IPRoute):
        return contextlib.nullcontext(netns)  # the caller's session: not ours to close
    return session(netns)


def ifindex(ifname: str, netns: Netns = None) -> int:
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise AttachError(f"interface {ifname} not found" + (f" in netns {netns}" if netns else ""))
    return idx[0]


def attach(ifname: str, from_fd: int, to_fd: int | None, name: str, netns: Netns = None,
           prio: int = PRIO) -> None:
    """Attach `from_fd` on tc ingress and `to_fd` (if any) on tc egress."""
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise AttachError(f"interface {ifname} not found")
        try:
            ipr.tc("add", "clsact", idx[0])
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise AttachError(f"{ifname}: adding clsact: {e}") from e
        for parent, fd in ((INGRESS, from_fd), (EGRESS, to_fd)):
            if fd is None:
                continue
            try:
                ipr.tc("replace-filter", "bpf", idx[0], HANDLE, fd=fd, name=name, parent=parent,
                       classid=1, direct_action=True, prio=prio)
            except NetlinkError as e:
                raise AttachError(f"{ifname}: attaching {name}: {e}") from e


def attached(ifname: str, netns: Netns = None, prio: int = PRIO) -> Attached | None:
    """Names of our filters on ifname, None when the interface is gone."""
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return None
        names: dict[int, str | None] = {}
        for parent in (INGRESS, EGRESS):
            names[parent] = None
            try:
                filters = ipr.get_filters(index=idx[0], parent=parent)
            except NetlinkError:
                continue
            for f in filters:
                opts = f.get_attr("TCA_OPTIONS")
                if f.get("handle") == HANDLE and opts is not None and (f.get("info") >> 16) == prio:
                    names[parent] = opts.get_attr("TCA_BPF_NAME")
    return Attached(names[INGRESS], names[EGRESS])


def detach_filter(ifname: str, prio: int, netns: Netns = None) -> None:
    """Remove only our filter at `prio` (both directions), leaving the qdisc
    and anyone else's filters (for shared devices such as lo)."""
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return
        for parent in (INGRESS, EGRESS):
            try:
                ipr.tc("del-filter", "bpf", idx[0], HANDLE, parent=parent, prio=prio)
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.EINVAL):
                    raise AttachError(f"{ifname}: removing filter prio {prio}: {e}") from e


def detach(ifname: str, netns: Netns = None) -> None:
    """Remove the clsact qdisc (and with it our filters); gone is fine."""
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return
        try:
            ipr.tc("del", "clsact", idx[0])
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL):
                raise AttachError(f"{ifname}: removing clsact: {e}") from e
