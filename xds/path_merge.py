"""Merging HTTP rules of one peer set that differ only in their path into one
RE2 alternation, so Envoy builds and compiles one matcher instead of
thousands (its cost per RBAC permission dominates a large update; see
bench/bench_xds.py). Pure; no I/O. The merged regex full-matches exactly when
one of the original paths does (tests/xds/test_path_merge.py checks it with
RE2 itself)."""

from __future__ import annotations

import os
import re
from functools import lru_cache

from policy import re2_check
from policy.compiled import HTTPRule

# A regex without any of these is its own literal (matched exactly, no regex).
REGEX_META = re.compile(r"[\\.^$|?*+()\[\]{}]")
_METHOD_LITERAL = re.compile(r"[A-Za-z]+")
_NOT_STRUCTURE = re.compile(r"[^()|]+")


@lru_cache(maxsize=1 << 16)
def _regex_shape(regex: str) -> tuple[bool, bool]:
    """(balanced, has a top-level `|`), in one scan that skips escapes and
    character classes. Balanced: the parentheses balance, so the regex
    cannot close a group it did not open."""
    if "[" not in regex and "\\" not in regex:
        # Without escapes and classes only ( ) | move the scan: skip the rest in C.
        regex = _NOT_STRUCTURE.sub("", regex)
    depth, i, n, in_class = 0, 0, len(regex), False
    went_negative = top_pipe = False
    while i < n:
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            # a ']' right after '[' or '[^' is a literal member
            if regex[i + 1 : i + 2] == "^":
                i += 1
            if regex[i + 1 : i + 2] == "]":
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            went_negative |= depth < 0
        elif c == "|" and depth == 0:
            top_pipe = True
        i += 1
    return (depth == 0 and not went_negative and not in_class and i == n), top_pipe


def balanced(regex: str) -> bool:
    return _regex_shape(regex)[0]


def _has_top_level_pipe(regex: str) -> bool:
    return _regex_shape(regex)[1]


_QUANTIFIERS = "*+?{"


@lru_cache(maxsize=1 << 16)
def _split_literal(regex: str) -> tuple[str, str] | None:
    """(literal prefix, rest) with prefix + rest == regex and the prefix free
    of metacharacters; None if the regex has a top-level `|` (concatenation
    would not distribute over it). A quantifier binds the character before
    it, so that character stays in the rest."""
    m = REGEX_META.search(regex)
    if m is None:
        return regex, ""
    i = m.start()
    if regex[i] in _QUANTIFIERS and i > 0:
        i -= 1
    if _has_top_level_pipe(regex):
        return None
    return regex[:i], regex[i:]




def alternation(paths: list[str]) -> str:
    """One regex that full-matches exactly what one of `paths` full-matches.

    Paths sharing the regex tail after their literal prefix are written as
    `(?:prefix1|prefix2|...)(?:tail)` (concatenation distributes over
    alternation). RE2 factors common prefixes itself but not tails, and
    thousands of branches each ending in their own `(/.*)?` made Envoy's
    compile of a 10k-rule update ~4x slower than the factored form."""
    by_tail: dict[str, list[str]] = {}
    whole: list[str] = []
    for p in paths:
        split = _split_literal(p)
        if split is None or not split[0]:
            whole.append(p)
        else:
            by_tail.setdefault(split[1], []).append(split[0])
    parts = []
    for tail, prefixes in by_tail.items():
        if len(prefixes) == 1:
            head = prefixes[0]
        else:
            # The prefixes are literals, so their common start can be cut
            # anywhere and written once: Envoy's time to apply a route
            # configuration grows with the regex text (bench_xds: a 90-byte
            # common prefix on 10k paths took change->ACK from 14 to 51 ms).
            common = os.path.commonprefix(prefixes)
            head = common + "(?:" + "|".join(p[len(common):] for p in prefixes) + ")"
        parts.append(head + (f"(?:{tail})" if tail else ""))
    parts.extend(whole)
    return parts[0] if len(parts) == 1 and not whole else "|".join(f"(?:{x})" for x in parts)


def literal_alternatives(regex: str) -> list[str] | None:
    """["GET", "HEAD"] for "GET|HEAD": method regexes are nearly always plain
    alternations of method names, which Envoy can match without compiling a
    regex (RE2 full match of an alternation of literals == one exact equal)."""
    parts = regex.split("|")
    if all(_METHOD_LITERAL.fullmatch(p) for p in parts):
        return parts
    return None


class PathMerger:
    """Merges rules' paths. Each path's RE2 validity is known from the policy
    loader's check (policy/re2_check.py) or checked here once for the process.

    The merge of each (method, host, headers) group is remembered by its
    paths, so a change to one rule of a 10k-rule listener redoes only the
    group it is in (a cold merge of 10k rules is ~13 ms of the render)."""

    # Bound on the paths the memo references; past it, it starts over.
    MEMO_PATHS = 1 << 18

    def __init__(self) -> None:
        self._memo: dict[tuple, list[HTTPRule]] = {}
        self._memo_paths = 0

    def valid_paths(self, paths: list[str]) -> list[str]:
        """The paths that compile as RE2 regexes."""
        return [p for p, ok in zip(paths, re2_check.valid(paths)) if ok]

    def merge(self, rules: list[HTTPRule]) -> list[HTTPRule]:
        """Rules of one peer set that differ only in their path become one rule
        whose path is the alternation of theirs: `(?:p1)|(?:p2)|...` full-matches
        exactly when one of the paths does, so the verdict is unchanged, but
        Envoy builds and compiles one matcher instead of thousands (its cost
        per RBAC permission dominates a large update; see bench/bench_xds.py).

        A path is merged only if it cannot leak out of its `(?:...)` and is
        valid RE2 on its own: its parentheses balance and it compiles
        (valid_paths). Any other path stays unmerged, so it cannot change the
        meaning of the others and Envoy's NACK names it."""
        by_rest: dict[tuple, list[str | None]] = {}
        for r in rules:
            by_rest.setdefault((r.method, r.host, r.headers), []).append(r.path)
        out: list[HTTPRule] = []
        for rest, paths in by_rest.items():
            method, host, headers = rest
            if len(paths) == 1:
                out.append(HTTPRule(method=method, path=paths[0], host=host, headers=headers))
                continue
            key = (rest, tuple(paths))
            got = self._memo.get(key)
            if got is None:
                got = self._merge_group(method, host, headers, paths)
                if self._memo_paths + len(paths) > self.MEMO_PATHS:
                    self._memo.clear()
                    self._memo_paths = 0
                self._memo[key] = got
                self._memo_paths += len(paths)
            out.extend(got)
        return out

    def _merge_group(self, method: str | None, host: str | None, headers: tuple, paths: list[str | None]) -> list[HTTPRule]:
        if None in paths:
            return [HTTPRule(method=method, path=None, host=host, headers=headers)]  # any path
        unique: list[str] = list(dict.fromkeys(paths))  # type: ignore[arg-type]
        good = self.valid_paths([p for p in unique if balanced(p)])
        merged = set(good)
        out = [HTTPRule(method=method, path=p, host=host, headers=headers) for p in unique if p not in merged]
        if good:
            path = alternation(good) if len(good) > 1 else good[0]
            out.append(HTTPRule(method=method, path=path, host=host, headers=headers))
        return out
