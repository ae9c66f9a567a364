"""Merging HTTP rules of one peer set that differ only in their path into one
RE2 alternation, so Envoy builds and compiles one matcher instead of
thousands (its cost per RBAC permission dominates a large update; see
bench/bench_xds.py). Pure; no I/O. The merged regex full-matches exactly when
one of the original paths does (tests/xds/test_path_merge.py checks it with
RE2 itself)."""

from __future__ import annotations

import re
from functools import lru_cache

import re2

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
        head = prefixes[0] if len(prefixes) == 1 else "(?:" + "|".join(prefixes) + ")"
        parts.append(head + (f"(?:{tail})" if tail else ""))
    parts.extend(whole)
    return parts[0] if len(parts) == 1 and not whole else "|".join(f"(?:{x})" for x in parts)


def _re2_ok(regex: str) -> bool:
    try:
        re2.compile(regex)
        return True
    except re2.error:
        return False


def literal_alternatives(regex: str) -> list[str] | None:
    """["GET", "HEAD"] for "GET|HEAD": method regexes are nearly always plain
    alternations of method names, which Envoy can match without compiling a
    regex (RE2 full match of an alternation of literals == one exact equal)."""
    parts = regex.split("|")
    if all(_METHOD_LITERAL.fullmatch(p) for p in parts):
        return parts
    return None


class PathMerger:
    """Merges rules' paths, remembering each path's RE2 validity for the
    renderer's life (Renderer keeps one)."""

    def __init__(self) -> None:
        self._valid: dict[str, bool] = {}

    def forget_if_large(self) -> None:
        if len(self._valid) > 1 << 18:  # paths of long-gone rules: forget them (re-checked in bulk)
            self._valid.clear()

    def valid_paths(self, paths: list[str]) -> list[str]:
        """The paths that compile as RE2 regexes. Each path is compiled once in
        the renderer's life: new paths in bulk as one alternation (one C++
        compile instead of thousands of Python calls), one by one only when
        that fails, to single out the invalid ones."""
        new = [p for p in paths if p not in self._valid]
        if len(new) > 1 and _re2_ok("|".join(f"(?:{p})" for p in new)):
            self._valid.update(dict.fromkeys(new, True))
        else:
            self._valid.update((p, _re2_ok(p)) for p in new)
        return [p for p in paths if self._valid[p]]

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
        by_rest: dict[tuple, list[HTTPRule]] = {}
        for r in rules:
            by_rest.setdefault((r.method, r.host, r.headers), []).append(r)
        out: list[HTTPRule] = []
        for (method, host, headers), same in by_rest.items():
            if len(same) == 1:
                out.extend(same)
                continue
            if any(r.path is None for r in same):
                out.append(HTTPRule(method=method, path=None, host=host, headers=headers))  # any path
                continue
            paths = list(dict.fromkeys(r.path for r in same))  # type: ignore[misc]
            good = self.valid_paths([p for p in paths if balanced(p)])
            merged = set(good)
            out.extend(HTTPRule(method=method, path=p, host=host, headers=headers) for p in paths if p not in merged)
            if good:
                path = alternation(good) if len(good) > 1 else good[0]
                out.append(HTTPRule(method=method, path=path, host=host, headers=headers))
        return out
