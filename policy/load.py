"""Load policy files and directories into Policies plus PolicyErrors.

The only module of `policy/` that does I/O: it reads the files it is given.
Directories are walked recursively over *.yaml, *.yml and *.json (sorted, so
order is reproducible). A file may hold several documents; a policy test
(`ciliate.io/v1 PolicyTest`, policy/flow_tests.py) is skipped, so tests can
live beside their policies; a bad file or
document is reported and skipped, the good ones still load. When two
documents define the same policy key, the later one in load order replaces
the earlier (as `kubectl apply` of both would) and a warning says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policy.errors import PolicyError, PolicyErrors
from policy.model import Policy

if TYPE_CHECKING:
    import yaml

# yaml and the validating parser (pydantic, about half of an offline
# command's start-up) are imported when a file's text is first parsed, not
# with this module: `ciliate policy trace` answered from its parse cache
# (agent/cli/parse_cache.py) never needs them.

EXTENSIONS = (".yaml", ".yml", ".json")
# A policy test's document (policy/flow_tests.py): skipped by the loader.
TEST_API_VERSION = "ciliate.io/v1"
TEST_KIND = "PolicyTest"
INTERNAL_ERROR = "internal error while parsing (please report)"
# Kubernetes caps one object near 1.5 MiB (etcd's request limit); a file may
# hold several documents, so allow a few of those. A bigger file is refused
# before it is read: parsing 50 MB of YAML takes tens of seconds and
# hundreds of MB, and the agent parses every change of the directory.
MAX_FILE_BYTES = 4 * 1024 * 1024
# One document over Kubernetes' object limit could never be applied to a
# cluster: refuse it here too, so a file that loads is one that would.
MAX_DOCUMENT_BYTES = 1536 * 1024



def _safe_loader() -> type:
    """libyaml's loader when PyYAML was built with it: ~10x faster than the
    pure Python one, which was most of the agent's time reading one changed
    file."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _TooBig:
    """A document over MAX_DOCUMENT_BYTES, kept in its place (never constructed)."""

    def __init__(self, size: int) -> None:
        self.size = size


def yaml_documents(text: str, limit: int) -> list[Any]:
    """yaml.safe_load_all, but a document over `limit` bytes becomes a
    _TooBig instead of being built (its size is known once it is composed)."""
    loader = _safe_loader()(text)
    docs: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            span = node.end_mark.index - node.start_mark.index if node is not None else 0
            size = len(text[node.start_mark.index : node.end_mark.index].encode()) if span * 4 > limit else span
            docs.append(_TooBig(size) if size > limit else loader.construct_document(node))
    finally:
        loader.dispose()
    return docs


@dataclass
class LoadResult:
    policies: list[Policy] = field(default_factory=list)
    errors: list[PolicyError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def is_test_document(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("apiVersion") == TEST_API_VERSION and doc.get("kind") == TEST_KIND


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
    return [path]


def _yaml_error(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1} column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def load_text(text: str, source: str, is_json: bool = False, doc_limit: int = MAX_DOCUMENT_BYTES) -> LoadResult:
    """Parse the documents of one file's text."""
    import yaml

    from policy.parse import parse_object

    out = LoadResult(files=[source])
    docs: list[Any]
    try:
        if is_json:
            size = len(text.strip().encode())  # the object, not the whitespace around it
            docs = [_TooBig(size) if size > doc_limit else json.loads(text)]
        else:
            docs = yaml_documents(text, doc_limit)
    except json.JSONDecodeError as e:
        out.errors.append(PolicyError(source, None, "", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"))
        return out
    except yaml.YAMLError as e:
        out.errors.append(PolicyError(source, None, "", _yaml_error(e)))
        return out
    except (ValueError, RecursionError) as e:  # e.g. absurd nesting
        out.errors.append(PolicyError(source, None, "", f"unreadable document: {e}"))
        return out
    # A lone document is named by its file alone; several get their index.
    real = [(i, d) for i, d in enumerate(docs) if d is not None]
    if not real:
        return out
    multi = len(docs) > 1
    for i, d in real:
        if isinstance(d, _TooBig):
            out.errors.append(
                PolicyError(source, i if multi else None, "", f"document is {d.size} bytes, over the {doc_limit}-byte limit of a Kubernetes object")
            )
            continue
        if is_test_document(d):
            continue  # a PolicyTest (policy/flow_tests.py) beside the policies it tests: not a policy
        try:
            out.policies.append(parse_object(d, source, i if multi else None))
        except PolicyErrors as e:
            out.errors.extend(e.errors)
        except RecursionError:
            out.errors.append(PolicyError(source, i if multi else None, "", "document nested too deeply"))
        except Exception as e:  # noqa: BLE001 - a parser bug must not lose the other documents
            out.errors.append(PolicyError(source, i if multi else None, "", f"{INTERNAL_ERROR}: {type(e).__name__}: {e}"))
    return out


def not_utf8(data: bytes, err: UnicodeDecodeError) -> str:
    """The reason for bytes that do not decode, with the first offending byte and its offset."""
    return f"not UTF-8 (byte {data[err.start]:#04x} at offset {err.start})"


def read_policy_file(path: Path, out: LoadResult, limit: int = MAX_FILE_BYTES) -> str | None:
    """The file's text, or None with the reason added to `out.errors`."""
    name = str(path)
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                out.errors.append(PolicyError(name, None, "", f"file is {size} bytes, over the {limit}-byte limit"))
                return None
            data = fh.read(limit + 1)  # a file growing after the stat is still bounded
    except OSError as e:
        out.errors.append(PolicyError(name, None, "", f"cannot read: {e.strerror or e}"))
        return None
    if len(data) > limit:
        out.errors.append(PolicyError(name, None, "", f"file is over the {limit}-byte limit"))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        out.errors.append(PolicyError(name, None, "", f"cannot read: {not_utf8(data, e)}"))
        return None


# One file's text, its name and whether it is JSON -> its documents parsed.
ParseText = Callable[[str, str, bool], LoadResult]


def parse_file_text(text: str, source: str, is_json: bool) -> LoadResult:
    return load_text(text, source, is_json=is_json)


def load_paths(paths: Sequence[str | Path], parse: ParseText = parse_file_text) -> LoadResult:
    """Every policy of `paths` (files or directories). `parse` turns one
    file's text into its documents: load_text itself, or a cache in front
    of it (the same result for the same text, name and code)."""
    out = LoadResult()
    seen: dict[str, Policy] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            out.errors.append(PolicyError(str(raw), None, "", "no such file or directory"))
            continue
        for f in _files(path):
            name = str(f)
            text = read_policy_file(f, out)
            if text is None:
                continue
            res = parse(text, name, f.suffix.lower() == ".json")
            out.files.append(name)
            out.errors.extend(res.errors)
            for p in res.policies:
                prev = seen.get(p.key)
                if prev is not None:
                    out.warnings.append(
                        f"{_where(p)}: {p.key} replaces the one from {_where(prev)} (same kind, namespace and name)"
                    )
                seen[p.key] = p
    out.policies = list(seen.values())
    return out


def _where(p: Policy) -> str:
    return p.source if p.doc is None else f"{p.source}:{p.doc}"
