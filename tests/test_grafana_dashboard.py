"""deploy/grafana/ciliate.json queries only metrics the agent exports.

Every panel's PromQL is taken apart: label matchers, range selectors, string
literals and `by (...)` groupings are removed, function calls and keywords
skipped; what is left are metric names, and each must be a series name the
agent's registry exposes (a counter's `_total`, a histogram's `_bucket`...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from agent.core.metrics import AgentMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "ciliate.json"
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
# The panels the issue asks for, found by the metric each one reads.
_REQUIRED = {
    "ciliate_drop_count_total",
    "ciliate_policy_l7_total",
    "ciliate_endpoint_regeneration_time_stats_seconds_bucket",
    "ciliate_bpf_map_pressure",
    "ciliate_xds_nacks_total",
}


def exported_series() -> set[str]:
    names = set()
    for family in AgentMetrics().registry.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range and subquery selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    e = re.sub(r"\$\w+", "", e)  # Grafana variables
    e = re.sub(r"\b\d+(?:ms|s|m|h|d|w|y)\b", "", e)  # durations (offset 5m)
    e = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", "", e)  # numbers (1e-9, 0.99)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        if e[m.end():].lstrip().startswith("(") or word in _KEYWORDS:
            continue  # a function call or a keyword
        names.add(word)
    return names


def test_metric_names_are_taken_from_promql():
    expr = 'sum by (le) (rate(a_bucket{rule=~"x|y"}[5m])) / clamp_min(sum(rate(b_total[$__rate_interval])), 1e-9) and on (job) c offset 5m'
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_every_panel_queries_only_metrics_the_agent_exports():
    dash = json.loads(DASHBOARD.read_text())
    exported = exported_series()
    used: set[str] = set()
    assert dash["panels"], "the dashboard has no panels"
    for panel in dash["panels"]:
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: {target['expr']!r} names no metric"
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} queries {sorted(unknown)}, which the agent does not export"
            used |= names
    assert _REQUIRED <= used, f"no panel shows {sorted(_REQUIRED - used)}"
