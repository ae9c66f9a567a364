"""The base of every declared input shape: strict types, unknown fields refused.

Strict because YAML's `80` and `"80"` differ and a boolean is not a port:
each field says what it accepts, and any coercion is written out in a
validator (ports.py accepts "80" on purpose). Pure.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # defer_build: the validators are built at the first policy parsed, not
    # at import, so commands that never parse one (status, endpoint list)
    # do not pay for them.
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)
