"""The agent's state directory: allocator state and the endpoint table on disk.

Writes are atomic (temporary file in the same directory, fsync, rename), so a
`kill -9` at any moment leaves either the old or the new file, never half of
one. The directory is root-only (0700) and its files 0600: they name pods,
labels and sockets, and Envoy's log may hold request headers. Does file I/O;
nothing else.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agent.core.models import EndpointRecord
from agent.core.ports import Allocations

_ENDPOINTS = "endpoints.json"
_IDENTITIES = "identities.json"
_PROXY_PORTS = "proxy_ports.json"
_FORMAT = 1
_records = TypeAdapter(list[EndpointRecord])


class StateError(Exception):
    """A state file exists but cannot be read; the agent refuses to guess."""


def atomic_write_json(path: Path, value: Any) -> None:
    data = json.dumps(value, indent=1, sort_keys=True).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: cannot read agent state ({exc}); move it aside to start from scratch") from exc


def make_private(root: Path) -> None:
    """Create `root` (and missing parents) as 0700, and take group and other
    access away from everything already below it: an older install left the
    directory 0755 and its files 0644. Sockets and symlinks are left alone
    (a socket's owner sets its mode; a link is not followed)."""
    for d in reversed(root.parents):
        if not d.exists():
            d.mkdir(mode=0o700, exist_ok=True)
    root.mkdir(mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # removed meanwhile
            if st.st_mode & 0o077 and (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir

    def ensure(self) -> None:
        make_private(self.dir)

    def load_allocations(self) -> Allocations | None:
        ids = _read_json(self.dir / _IDENTITIES)
        ports = _read_json(self.dir / _PROXY_PORTS)
        if ids is None and ports is None:
            return None
        return Allocations(identities=ids, proxy_ports=ports)

    def save_allocations(self, alloc: Allocations) -> None:
        if alloc.identities is not None:
            atomic_write_json(self.dir / _IDENTITIES, alloc.identities)
        if alloc.proxy_ports is not None:
            atomic_write_json(self.dir / _PROXY_PORTS, alloc.proxy_ports)

    def load_endpoints(self) -> list[EndpointRecord]:
        path = self.dir / _ENDPOINTS
        raw = _read_json(path)
        if raw is None:
            return []
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            raise StateError(f"{path}: unknown format (expected {{'format': {_FORMAT}, 'endpoints': [...]}})")
        try:
            return _records.validate_python(raw.get("endpoints", []))
        except ValidationError as exc:
            raise StateError(f"{path}: invalid endpoint record: {exc}") from exc

    def save_endpoints(self, records: list[EndpointRecord]) -> None:
        body = {"format": _FORMAT, "endpoints": [r.model_dump(mode="json") for r in sorted(records, key=lambda r: r.id)]}
        atomic_write_json(self.dir / _ENDPOINTS, body)
