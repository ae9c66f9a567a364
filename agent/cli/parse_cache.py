"""A cache of parsed policy files for the offline `ciliate policy` commands
(trace, validate, diff, test).

Parsing validates every document with pydantic; importing it and building
its validators is most of a short command's start-up (~120 of ~210 ms for
`policy trace` over examples/starwars). A file whose text, name and parsing
code are the same as last time parses to the same result, so that result is
kept: one pickle per file, named by a SHA-256 of the code's fingerprint, the
file's name, its format and its text. A later command that finds every file
in the cache never imports yaml or pydantic. A changed file, or a changed
`policy/` source file or pydantic/PyYAML install, gives a new name: nothing
is ever answered from an entry made from other input or other code.

Where: $CILIATE_CACHE_DIR, else $XDG_CACHE_HOME/ciliate/parsed, else
~/.cache/ciliate/parsed. CILIATE_CACHE_DIR=off turns it off.

Who can reach it: loading a pickle runs what it says, so an entry is used
only from a directory owned by this user with no group or other access
(made 0700) and only when the entry is a regular file owned by this user,
mode 0600, opened without following a symbolic link, through the
directory's own descriptor (a directory swapped in after the check is not
read). Anything else, or anything that fails to load, is a miss: the file is
parsed as if there were no cache. Writes go to a temporary file renamed into
place, so a reader never sees half an entry. When a command that wrote
entries ends, the cache is cut to half of MAX_ENTRIES once over it, the
oldest first.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pickle
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from policy.load import LoadResult, ParseText, load_paths, parse_file_text

CACHE_ENV = "CILIATE_CACHE_DIR"
OFF = frozenset({"off", "0", "no", "false"})
MAX_ENTRIES = 512
MAX_ENTRY_BYTES = 64 * 1024 * 1024
SUFFIX = ".pickle"
_POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"
# The libraries parsing depends on: a reinstall changes their files' stat.
_LIBRARIES = ("pydantic", "pydantic_core", "yaml")


def default_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> Path | None:
    """Where the cache lives, or None when it is turned off."""
    chosen = env.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in OFF or not chosen.strip() else Path(chosen)
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ciliate" / "parsed"


def code_fingerprint(policy_dir: Path = _POLICY_DIR) -> bytes:
    """The interpreter, pickle's protocol, and the name, size and mtime of
    every source file of policy/ and of the libraries' own entry files."""
    h = hashlib.sha256(f"{sys.version}\0{pickle.HIGHEST_PROTOCOL}\0".encode())
    stack = [str(policy_dir)]
    files: list[tuple[str, int, int]] = []
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False) and e.name != "__pycache__":
                    stack.append(e.path)
                elif e.name.endswith(".py"):
                    st = e.stat()
                    files.append((e.path, st.st_size, st.st_mtime_ns))
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            with contextlib.suppress(OSError):
                st = os.stat(spec.origin)
                files.append((spec.origin, st.st_size, st.st_mtime_ns))
    for path, size, mtime in sorted(files):
        h.update(f"{path}\0{size}\0{mtime}\n".encode())
    return h.digest()


class ParseCache:
    """A ParseText (see policy/load.py) that answers from the cache when it
    can and parses with `parse` otherwise, keeping what it parsed."""

    def __init__(self, directory: Path | None, parse: ParseText = parse_file_text) -> None:
        """`directory` None: no cache, every file is parsed."""
        self.directory = directory
        self.parse = parse
        self.hits = 0
        self.misses = 0
        self._fingerprint: bytes | None = None
        self._dir_fd: int | None = None
        self._opened = False
        self._wrote = False

    def __call__(self, text: str, source: str, is_json: bool) -> LoadResult:
        fd = self._dir()
        if fd is None:
            return self.parse(text, source, is_json)
        if self._fingerprint is None:
            self._fingerprint = code_fingerprint()
        key = hashlib.sha256(
            self._fingerprint + source.encode("utf-8", "surrogateescape") + b"\0" + (b"j" if is_json else b"y") + b"\0" + text.encode()
        ).hexdigest() + SUFFIX
        hit = self._read(fd, key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        result = self.parse(text, source, is_json)
        self._wrote |= self._write(fd, key, result)
        return result

    def close(self) -> None:
        """Prune once if anything was written (not at every write: a cold
        load of a large directory would list the cache once per file)."""
        if self._dir_fd is not None:
            if self._wrote:
                self._prune(self._dir_fd)
            os.close(self._dir_fd)
            self._dir_fd = None

    def __enter__(self) -> ParseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the directory ---------------------------------------------------------

    def _dir(self) -> int | None:
        """The directory's descriptor once it passed the checks, else None
        (then every file is parsed)."""
        if self._opened:
            return self._dir_fd
        self._opened = True
        if self.directory is None:
            return None
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            os.close(fd)
            return None
        self._dir_fd = fd
        return fd

    # -- entries -------------------------------------------------------------

    @staticmethod
    def _read(dir_fd: int, name: str) -> LoadResult | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (
                not stat.S_ISREG(st.st_mode)
                or st.st_uid != os.geteuid()
                or st.st_mode & 0o077
                or st.st_size > MAX_ENTRY_BYTES
            ):
                return None
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(MAX_ENTRY_BYTES + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            value = pickle.loads(data)
        except Exception:  # noqa: BLE001 - an entry that does not load is a miss
            return None
        return value if isinstance(value, LoadResult) else None

    @staticmethod
    def _write(dir_fd: int, name: str, result: LoadResult) -> bool:
        """Whether the entry was written."""
        try:
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - a result that does not pickle is just not kept
            return False
        if len(data) > MAX_ENTRY_BYTES:
            return False
        tmp = f".{name}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb", closefd=False) as fh:
                    fh.write(data)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            return False
        return True

    @staticmethod
    def _prune(dir_fd: int) -> None:
        """Down to half of MAX_ENTRIES once over it, the oldest first."""
        try:
            with os.scandir(dir_fd) as it:
                entries = [(e.stat(follow_symlinks=False).st_mtime_ns, e.name) for e in it if e.name.endswith(SUFFIX)]
        except OSError:
            return
        if len(entries) <= MAX_ENTRIES:
            return
        for _, name in sorted(entries)[: len(entries) - MAX_ENTRIES // 2]:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)


def for_command() -> ParseCache:
    """What an offline command parses files with (close it, or use it in a
    `with`): the cache where there is one, else the parser itself."""
    return ParseCache(default_dir())


def load_policies(paths: Sequence[str | Path]) -> LoadResult:
    """policy.load.load_paths through the command's cache."""
    with for_command() as parse:
        return load_paths(paths, parse)
