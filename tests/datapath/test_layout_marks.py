"""The skb->mark magics have one Python home, redirect/layout.py, and it agrees
with bpf/lib/proxy.h; the ip rule and Envoy's upstream SO_MARK use it."""

from __future__ import annotations

import re
from pathlib import Path

from redirect import layout, proxy_route

PROXY_H = Path(__file__).resolve().parents[2] / "bpf" / "lib" / "proxy.h"


def _defines(text: str) -> dict[str, int]:
    return {m[1]: int(m[2], 16) for m in re.finditer(r"^#define\s+(MARK_MAGIC_\w+)\s+(0x[0-9a-fA-F]+)", text, re.M)}


def test_marks_agree_with_the_program_header():
    assert _defines(PROXY_H.read_text()) == layout.MARKS


def test_the_to_proxy_route_uses_the_layout_marks():
    assert (proxy_route.TO_PROXY_MARK, proxy_route.MARK_MASK) == (layout.MARK_MAGIC_TO_PROXY, layout.MARK_MAGIC_MASK)
    assert proxy_route.to_proxy_mark(15001) & layout.MARK_MAGIC_MASK == layout.MARK_MAGIC_TO_PROXY


def test_the_agents_envoy_marks_its_upstream_sockets_as_proxy_originated(tmp_path: Path):
    from agent.adapters.envoy_proxy import XdsProxy

    proxy = XdsProxy(tmp_path, spawn_envoy=False)
    assert proxy.renderer.params.upstream_mark == layout.MARK_MAGIC_PROXY_ORIGIN
