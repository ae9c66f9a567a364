"""The request path HTTP rules are matched against: Envoy's normalized path.

Every listener ciliate renders tells Envoy's HTTP connection manager to
normalize the path before any filter sees it, and the normalized path is also
what the upstream receives (xds/listener.py). `trace` must judge the same path,
so this module is the Python statement of that normalization, checked against
the real Envoy in tests/xds/test_envoy_path_normalization.py. Pure.

In order:
1. A percent-encoded slash or backslash (`%2F`, `%5C`, any case) is refused
   with 400: unescaping would change what an application that treats them as
   data receives, keeping them lets `/public/..%2fprivate` past a `/public/.*`
   rule to a backend that decodes after the rules matched.
2. Backslashes become slashes.
3. Percent-encoded unreserved characters (RFC 3986: letters, digits, `-._~`)
   are decoded; other valid escapes are kept as written; characters that may
   not appear in a path are percent-encoded (upper-case hex).
4. Dot segments are removed (RFC 3986 section 5.2.4), `%2e` counting as a
   dot and `..;x` as `..`.
5. Runs of slashes are merged into one.

The query string is left as sent.
"""

from __future__ import annotations

import string

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_HEX = frozenset(string.hexdigits)
# Printable ASCII that Envoy's canonicalizer percent-encodes in a path.
_ESCAPED = frozenset(' "<>^`{|}')


class PathRejected(ValueError):
    """Envoy answers this request 400 Bad Request before any rule runs."""


def split_query(target: str) -> tuple[str, str]:
    """("/p", "?q=1") for "/p?q=1"; ("/p", "") without a query."""
    path, sep, query = target.partition("?")
    return path, sep + query


def _canonical_chars(path: str) -> str:
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == "%" and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            code = int(path[i + 1 : i + 3], 16)
            if code in (0x2F, 0x5C):
                raise PathRejected(f"escaped slash {path[i:i + 3]!r} in path {path!r}")
            if code == 0:
                raise PathRejected(f"escaped NUL in path {path!r}")
            ch = chr(code)
            out.append(ch if ch in _UNRESERVED else path[i : i + 3])
            i += 3
            continue
        if c == "\\":
            out.append("/")
        elif c in _ESCAPED or ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"%{ord(c):02X}")
        elif ord(c) > 0x7F:
            out.append("".join(f"%{b:02X}" for b in c.encode()))
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")[1:]  # path starts with "/"
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        # A `;params` suffix does not hide a dot segment (`..;/` climbs too,
        # as Tomcat-style servers read it); Envoy drops the whole segment.
        head = seg.split(";", 1)[0]
        if head == ".":
            if last:
                out.append("")
        elif head == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _merge_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def normalize_path(target: str) -> str:
    """The :path Envoy's rules see (and the upstream receives) for a request
    whose target is `target`. Raises PathRejected where Envoy answers 400."""
    path, query = split_query(target)
    if not path.startswith("/"):
        raise PathRejected(f"path {target!r} does not start with '/'")
    if "#" in path:
        raise PathRejected(f"fragment in path {target!r}")
    return _merge_slashes(_remove_dot_segments(_canonical_chars(path))) + query
