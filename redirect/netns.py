"""Run a function inside a named network namespace (/run/netns/NAME).

setns() changes the calling thread only, so the function runs in a thread
of its own that ends with it; the caller's thread never leaves its netns.
Its result (or exception) is handed back. Does I/O.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from redirect.errors import PlumbingError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def run_in(netns: str | None, fn: Callable[[], T], name: str = "in-netns") -> T:
    """fn() as seen from netns (None: this process's own)."""
    if netns is None:
        return fn()
    got: list[T | BaseException] = []

    def inside() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise PlumbingError(f"setns({netns}): {os.strerror(ctypes.get_errno())}")
            got.append(fn())
        except BaseException as e:  # handed to the caller's thread
            got.append(e)
        finally:
            os.close(fd)

    t = threading.Thread(target=inside, name=name)
    t.start()
    t.join()
    if isinstance(got[0], BaseException):
        raise got[0]
    return got[0]
