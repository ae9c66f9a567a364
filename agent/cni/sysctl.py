"""Writing /proc/sys values, on the host or inside a pod's network namespace.

/proc/sys/net shows the network namespace of the thread that opens it, so a
pod's values are written from a short-lived thread that has joined the
pod's namespace (setns(2) moves only the calling thread); the plugin's other
threads stay on the host. Does kernel I/O.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from agent.cni.errors import IO_FAILURE, CniError

CLONE_NEWNET = 0x40000000


def write(path: str, value: str) -> None:
    try:
        Path(path).write_text(value)
    except FileNotFoundError as exc:
        if path.startswith("/proc/sys/net/ipv6/") and not Path("/proc/sys/net/ipv6").exists():
            raise CniError(IO_FAILURE, f"cannot set {path}: IPv6 is disabled in this kernel (ipv6.disable=1)") from exc
        raise CniError(IO_FAILURE, f"cannot set {path} to {value}: {exc}") from exc
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot set {path} to {value}: {exc}") from exc


def write_in_netns(netns: str, settings: Sequence[tuple[str, str]]) -> None:
    """Write (path, value) pairs as seen from inside the namespace at `netns`."""
    failure: list[BaseException] = []

    def inside() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise CniError(IO_FAILURE, f"cannot enter the network namespace {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            for path, value in settings:
                write(path, value)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    # A thread of its own: it ends in the pod's namespace, so none of the
    # plugin's other work can happen there by mistake.
    t = threading.Thread(target=inside, name="ciliate-cni-netns")
    t.start()
    t.join()
    if failure:
        exc = failure[0]
        if isinstance(exc, CniError):
            raise exc
        raise CniError(IO_FAILURE, f"writing sysctls in {netns} failed: {exc}") from exc
