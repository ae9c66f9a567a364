"""The request path HTTP rules are matched against: Envoy's normalized path.

Every listener ciliate renders tells Envoy's HTTP connection manager to
normalize the path before any filter sees it, and the normalized path is also
what the upstream receives (xds/listener.py). `trace` must judge the same path,
so this module is the Python statement of that normalization, checked against
the real Envoy on a generated corpus in
tests/xds/test_envoy_path_normalization.py. Pure.

Refused with 400 Bad Request, before any rule runs:
- a fragment (`#`) anywhere in the target, or a path not starting with `/`;
- a percent-encoded slash or backslash (`%2F`, `%5C`, any case) in the path:
  unescaping would change what an application that treats them as data
  receives, keeping them lets `/public/..%2fprivate` past a `/public/.*`
  rule to a backend that decodes after the rules matched;
- an escaped NUL (`%00`);
- a dot segment carrying parameters that survives normalization: a segment
  of the normalized path that is `.` or `..` followed by `;` or `%3B`. Envoy
  resolves `..;x` written with literal dots, but leaves `%2e%2e;x` (and
  `..;x` after a backslash) as the segment `..;x`, which Tomcat, Jetty and
  Spring resolve as `..` after the rules matched the unresolved path.
  xds/routes.py refuses the same paths with the same pattern
  (DOT_SEGMENT_WITH_PARAMS_REGEX).

Otherwise, in the order Envoy applies them:
1. A segment (between literal `/`) whose part before its first `;` is
   literally `.` or `..` loses that `;` and everything after it.
2. Backslashes become slashes; percent-encoded unreserved characters
   (letters, digits, `-._~`) are decoded, other valid escapes are kept as
   written; characters that may not appear in a path are percent-encoded
   (upper-case hex); a `%` that starts no valid escape is kept, unless what
   follows it would turn into one once decoded (then it becomes `%25`).
3. Dot segments (`.` and `%2e` in any mix) are removed, RFC 3986 section
   5.2.4 style.
4. Runs of slashes are merged into one (a path of nothing but slashes stays
   `//`, as Envoy leaves it).

The query string is left as sent.
"""

from __future__ import annotations

import re
import string

_UNRESERVED_DECODED = frozenset(string.ascii_letters + string.digits + "-_~")  # `.` is a dot: decoded apart
_HEX = frozenset(string.hexdigits)
# Printable ASCII that Envoy's canonicalizer percent-encodes in a path.
_ESCAPED = frozenset(' "<>^`{|}')
_ESCAPED_SLASH = re.compile(r"%(?:2[fF]|5[cC])")
_SLASHES = "/\\"

# A segment of the normalized path that is `.` or `..` with parameters.
# xds/routes.py gives Envoy the same pattern as a whole-path RE2 match.
_DOT_SEGMENT_WITH_PARAMS = r"/\.\.?(?:;|%3[bB])"
DOT_SEGMENT_WITH_PARAMS_REGEX = f".*{_DOT_SEGMENT_WITH_PARAMS}.*"
_DOT_SEGMENT_WITH_PARAMS_RE = re.compile(_DOT_SEGMENT_WITH_PARAMS)


class PathRejected(ValueError):
    """Envoy answers this request 400 Bad Request before any rule runs."""


def split_query(target: str) -> tuple[str, str]:
    """("/p", "?q=1") for "/p?q=1"; ("/p", "") without a query."""
    path, sep, query = target.partition("?")
    return path, sep + query


def _strip_dot_segment_params(path: str) -> str:
    segments = path.split("/")
    for i, seg in enumerate(segments):
        head, sep, _ = seg.partition(";")
        if sep and head in (".", ".."):
            segments[i] = head
    return "/".join(segments)


def _dot_len(s: str, i: int) -> int:
    """Length of the dot at s[i] (`.` or `%2e` in any case), 0 for none."""
    if s[i] == ".":
        return 1
    if s[i] == "%" and s[i + 1 : i + 3].lower() == "2e":
        return 3
    return 0


def _after_dots(s: str, i: int) -> tuple[str | None, int]:
    """What the dot ending just before s[i] is: ("cur" | "up" | None for a
    plain name, characters after the first dot that belong to it)."""
    n = len(s)
    if i == n:
        return "cur", 0
    if s[i] in _SLASHES:
        return "cur", 1
    second = _dot_len(s, i)
    if second:
        j = i + second
        if j == n:
            return "up", second
        if s[j] in _SLASHES:
            return "up", second + 1
    return None, 0


def _back_up(out: list[str]) -> None:
    """Drop the last segment of `out`, which ends with '/'; never the root."""
    i = len(out) - 1
    if i == 0:
        return
    i -= 1
    while out[i] != "/" and i > 0:
        i -= 1
    del out[i + 1 :]


def _is_escape(chars: list[str] | str, i: int) -> bool:
    return i + 3 <= len(chars) and chars[i + 1] in _HEX and chars[i + 2] in _HEX


def _defuse_nested_escape(path: str, next_i: int, bad: int, out: list[str]) -> None:
    """A character just decoded right after a `%` that started no escape
    (out[bad]): if the output now reads as a valid escape (`%%41b` -> `%Ab`),
    that `%` becomes `%25`, so decoding the output again cannot change it."""
    length = len(out)
    last = out[-1]
    append_next = bad == length - 2
    if append_next:
        if next_i == len(path) or ord(path[next_i]) >= 0x80:
            return
        out.append(path[next_i])  # looked at only: processed again by the caller
    if _is_escape(out, bad):
        if not append_next:
            out.append(out[bad + 1])
        out[bad + 1], out[bad + 2] = "2", "5"
        out.append(last)
    elif append_next:
        del out[length:]


def _canonical(path: str) -> str:
    out: list[str] = []
    bad_percent: int | None = None  # where in `out` the last `%` starting no escape is
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        dot = _dot_len(path, i)
        if dot:
            kind, more = _after_dots(path, i + dot) if out and out[-1] == "/" else (None, 0)
            if kind is None:
                out.append(".")
            elif kind == "up":
                _back_up(out)
            i += dot + more
            continue
        if c == "%":
            if not _is_escape(path, i):
                bad_percent = len(out)
                out.append("%")
                i += 1
                continue
            code = int(path[i + 1 : i + 3], 16)
            if code == 0:
                raise PathRejected(f"escaped NUL in path {path!r}")
            i += 3
            if chr(code) not in _UNRESERVED_DECODED:
                out.extend(path[i - 3 : i])
                continue
            out.append(chr(code))
            if bad_percent is not None and bad_percent >= len(out) - 3:
                _defuse_nested_escape(path, i, bad_percent, out)
            continue
        if c == "\\":
            out.append("/")
        elif c in _ESCAPED or ord(c) < 0x20 or ord(c) == 0x7F:
            out.extend(f"%{ord(c):02X}")
        elif ord(c) > 0x7F:
            out.extend("".join(f"%{b:02X}" for b in c.encode()))
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _merge_slashes(path: str) -> str:
    if "//" not in path:
        return path
    # As Envoy does it: a path of nothing but slashes keeps two.
    return "/" + "/".join(s for s in path.split("/") if s) + ("/" if path.endswith("/") else "")


def normalize_path(target: str) -> str:
    """The :path Envoy's rules see (and the upstream receives) for a request
    whose target is `target`. Raises PathRejected where Envoy answers 400."""
    path, query = split_query(target)
    if not path.startswith("/"):
        raise PathRejected(f"path {target!r} does not start with '/'")
    if "#" in target:
        raise PathRejected(f"fragment in {target!r}")
    if m := _ESCAPED_SLASH.search(path):
        raise PathRejected(f"escaped slash {m.group()!r} in path {path!r}")
    seen = _merge_slashes(_canonical(_strip_dot_segment_params(path)))
    if m := _DOT_SEGMENT_WITH_PARAMS_RE.search(seen):
        raise PathRejected(f"dot segment with parameters {m.group()[1:]!r} in path {seen!r}")
    return seen + query
