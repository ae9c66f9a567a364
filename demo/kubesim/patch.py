"""The patch formats kubesim accepts: JSON merge patch (RFC 7386), strategic
merge patch treated as a merge patch plus its `$`-directives stripped, and
JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied (422 or 400 on a real server)."""


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _strip_directives(value: Any) -> Any:
    """Drop strategic-merge directives (`$patch`, `$setElementOrder/...`,
    `$retainKeys`, `$deleteFromPrimitiveList/...`): lists are replaced whole."""
    if isinstance(value, dict):
        if value.get("$patch") == "delete":
            return None
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value if not (isinstance(v, dict) and v.get("$patch") == "delete")]
    return value


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    return merge_patch(target, _strip_directives(patch))


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, list):
            cur = cur[int(p)]
        elif isinstance(cur, dict) and p in cur:
            cur = cur[p]
        else:
            raise PatchError(f"path not found: /{'/'.join(parts)}")
    return cur


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise PatchError("a JSON patch is a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"malformed JSON patch operation: {op!r}")
        parts = _pointer(op["path"])
        if not parts:
            raise PatchError("JSON patch on the whole document is not supported")
        try:
            parent, last = _parent(doc, parts), parts[-1]
            kind = op["op"]
            if kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
                if current != op.get("value"):
                    raise PatchError(f"test failed at {op['path']}")
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind in ("add", "replace"):
                value = copy.deepcopy(op.get("value"))
                if isinstance(parent, list):
                    idx = len(parent) if last == "-" else int(last)
                    if kind == "add":
                        parent.insert(idx, value)
                    else:
                        parent[idx] = value
                else:
                    if kind == "replace" and last not in parent:
                        raise PatchError(f"replace of a missing path: {op['path']}")
                    parent[last] = value
            else:
                raise PatchError(f"unsupported JSON patch operation: {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            if isinstance(e, PatchError):
                raise
            raise PatchError(f"cannot apply {op!r}: {e}") from e
    return doc
