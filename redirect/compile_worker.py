"""Compile and load eBPF programs in a child process, and hand the loaded
programs' fds back to the parent over a unix socket (SCM_RIGHTS).

Why a child: importing bcc maps libbcc and LLVM, and one compile leaves
LLVM's heap behind: together ~120 MiB of the agent's resident memory, for
the whole life of a process that compiles a handful of times. The programs
do not belong to the process that loaded them: a kernel object lives while
some fd, pin or tc filter holds it, so the child may exit once the parent
holds the fds. Does process and socket I/O.

Protocol: the parent writes one JSON request on the child's stdin; the child
answers with one message on the socket whose fd number is its argument:
JSON `{"names": [...]}` carrying one fd per name, in that order, or
`{"error": "..."}` (the compiler's own words) with none.
"""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from redirect.errors import ProgramLoadError

_CODE_ROOT = Path(__file__).resolve().parent.parent  # the directory holding redirect/
TIMEOUT = 300.0  # seconds: a compile is seconds, on a loaded machine tens
MAX_REPLY = 1 << 20


def load_in_child(
    endpoint_id: int, header: Path, source: Path, names: tuple[str, ...],
    cgroup_attach: int | dict[str, int] | None,
) -> dict[str, int]:
    """The named functions of `source`, compiled and loaded by a child
    process: name -> fd in this process. Raises ProgramLoadError."""
    request = {
        "endpoint_id": endpoint_id, "header": str(header), "source": str(source),
        "names": list(names), "cgroup_attach": cgroup_attach,
    }
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            # -P and cwd "/": `-m` would otherwise put the working directory
            # first on the path, and a `redirect/` planted in it would run as
            # root; the code comes from where this module was loaded.
            [sys.executable, "-P", "-m", "redirect.compile_worker", str(theirs.fileno())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(theirs.fileno(),), close_fds=True, cwd="/",
            env={**os.environ, "PYTHONPATH": str(_CODE_ROOT)},
        )
        theirs.close()
        try:
            _, stderr = proc.communicate(json.dumps(request).encode(), timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ProgramLoadError(endpoint_id, f"compiling {source.name} took over {TIMEOUT:.0f}s") from None
        ours.setblocking(False)
        try:
            msg, fds, _, _ = socket.recv_fds(ours, MAX_REPLY, len(names))
        except BlockingIOError:
            detail = stderr.decode(errors="replace").strip()[-4000:]
            raise ProgramLoadError(endpoint_id, f"the compile worker exited with {proc.returncode} and no answer\n{detail}") from None
    finally:
        ours.close()
        theirs.close()
    reply = json.loads(msg)
    if "error" in reply:
        for fd in fds:
            os.close(fd)
        raise ProgramLoadError(endpoint_id, reply["error"])
    if reply.get("names") != list(names) or len(fds) != len(names):
        for fd in fds:
            os.close(fd)
        raise ProgramLoadError(endpoint_id, f"the compile worker sent {len(fds)} programs for {list(names)}")
    return dict(zip(names, fds))


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    req = json.loads(sys.stdin.read())
    from redirect import loader  # the compiler's side, with bcc

    cgroup = req["cgroup_attach"]
    try:
        fds, module = loader.load_functions_here(
            int(req["endpoint_id"]), Path(req["header"]), Path(req["source"]), tuple(req["names"]),
            cgroup_attach=cgroup if not isinstance(cgroup, dict) else {k: int(v) for k, v in cgroup.items()},
        )
    except ProgramLoadError as e:
        sock.sendmsg([json.dumps({"error": e.message}).encode()])
        return 0
    names = list(req["names"])
    sock.sendmsg([json.dumps({"names": names}).encode()],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fds[n] for n in names]))])
    # Exit without bcc's cleanup: the parent holds the programs now.
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
