"""Compile and load bpf/bpf_lxc.c (shared by every endpoint) with bcc.

Does I/O (reads bpf/ sources, runs the compiler, loads programs). bcc only
rewrites map method calls (`ct.lookup(...)`) in the main file, so the quoted
`#include "lib/..."` lines are inlined into one text first; system headers
stay includes. The shared config header arrives with `-include`.
`compile_count()` counts compiler runs in this process (tests and benches
use it to show that attaching another endpoint does not compile).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from redirect.errors import ProgramLoadError

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
ENTRY = BPF_DIR / "bpf_lxc.c"
LO_ENTRY = BPF_DIR / "bpf_lo.c"
HOST_ENTRY = BPF_DIR / "bpf_host.c"
SOCK_ENTRY = BPF_DIR / "bpf_sock.c"
_INCLUDE = re.compile(r'\s*#include\s+"(lib/[^"]+)"')
_compiles = 0


def compile_count() -> int:
    """Programs compiled by this process so far (layout checks excluded)."""
    return _compiles


def flatten(path: Path = ENTRY, root: Path = BPF_DIR) -> str:
    return flatten_text(path.read_text(), root)


def flatten_text(text: str, root: Path = BPF_DIR, _seen: set[Path] | None = None) -> str:
    """Inline every `#include "lib/..."` (once each), recursively."""
    seen = set() if _seen is None else _seen
    out: list[str] = []
    for line in text.splitlines():
        m = _INCLUDE.match(line)
        if m:
            inc = root / m.group(1)
            if inc not in seen:
                seen.add(inc)
                out.append(f"/* --- {m.group(1)} --- */")
                out.append(flatten_text(inc.read_text(), root, seen))
            continue
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class LoadedProgram:
    """Program fds of one endpoint; the bcc module is kept only until the
    programs are attached (tc then holds its own reference)."""

    from_container: int
    to_container: int
    _bpf: object

    def close(self) -> None:
        cleanup = getattr(self._bpf, "cleanup", None)
        if cleanup is not None:
            with contextlib.suppress(Exception):
                cleanup()


@contextlib.contextmanager
def _capture_fd2():
    """libbcc prints compiler errors on fd 2; capture them for the error."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        buf = io.StringIO()
        try:
            yield buf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            buf.write(tmp.read().decode(errors="replace"))


def compile_and_load(endpoint_id: int, header: Path, source: Path = ENTRY) -> LoadedProgram:
    fds, b = load_functions(endpoint_id, header, source, ("from_container", "to_container"))
    return LoadedProgram(fds["from_container"], fds["to_container"], b)


class ReceivedPrograms:
    """The program fds a compile worker sent; cleanup() closes them, as
    closing a bcc module would (callers dup what they keep)."""

    def __init__(self, fds: dict[str, int]) -> None:
        self._fds = fds

    def cleanup(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}


def load_functions(
    endpoint_id: int, header: Path, source: Path, names: tuple[str, ...], *,
    cgroup_attach: int | dict[str, int] | None = None,
) -> tuple[dict[str, int], object]:
    """Compile `source` with `header` and load the named functions: sched_cls,
    or with cgroup_attach (a bpf_attach_type, or one per function name)
    cgroup/sock_addr programs for that hook. Returns their fds and an
    object whose cleanup() closes them (once attached).

    The compiler runs in a child process (compile_worker.py) that hands the
    loaded programs' fds back: libbcc and LLVM's heap never enter this
    process (they added ~120 MiB to the agent's resident memory for good)."""
    from redirect import compile_worker

    global _compiles
    _compiles += 1
    fds = compile_worker.load_in_child(endpoint_id, header, source, names, cgroup_attach)
    return fds, ReceivedPrograms(fds)


def load_functions_here(
    endpoint_id: int, header: Path, source: Path, names: tuple[str, ...], *,
    cgroup_attach: int | dict[str, int] | None = None,
) -> tuple[dict[str, int], object]:
    """load_functions() in this process (the compile worker's half)."""
    from bcc import BPF  # imported here: only the compile worker needs the compiler

    text = flatten(source)
    fds: dict[str, int] = {}
    b = None
    with _capture_fd2() as err:
        try:
            b = BPF(text=text.encode(), cflags=[f"-I{BPF_DIR}", "-include", str(header)])
            for name in names:
                if cgroup_attach is None:
                    fds[name] = b.load_func(name.encode(), BPF.SCHED_CLS).fd
                else:
                    hook = cgroup_attach[name] if isinstance(cgroup_attach, dict) else cgroup_attach
                    fds[name] = b.load_func(name.encode(), BPF.CGROUP_SOCK_ADDR, attach_type=hook).fd
        except Exception as e:  # bcc raises bare Exception
            failure: Exception | None = e
        else:
            failure = None
    if failure is not None:
        if b is not None:
            with contextlib.suppress(Exception):
                b.cleanup()
        detail = err.getvalue().strip()
        lines = [ln for ln in detail.splitlines() if ln.strip()]
        msg = "\n".join(lines[-40:]) if lines else str(failure)
        raise ProgramLoadError(endpoint_id, f"{failure}\n{msg}")
    return fds, b


def check_layout(asserts: str | None = None) -> None:
    """Compile bpf/lib/layout.h with the Python layout asserts; raises
    ProgramLoadError (endpoint 0) naming the first disagreement."""
    from bcc import BPF

    from redirect import layout

    text = flatten_text('#include "lib/layout.h"\n') + (asserts if asserts is not None else layout.c_asserts())
    with _capture_fd2() as err:
        try:
            BPF(text=text.encode(), cflags=[f"-I{BPF_DIR}"])
        except Exception as e:
            failure: Exception | None = e
        else:
            failure = None
    if failure is not None:
        raise ProgramLoadError(0, err.getvalue().strip() or str(failure))

