"""README.md's Metrics table lists exactly the metrics the agent exports."""

from __future__ import annotations

import re
from pathlib import Path

from agent.core.metrics import AgentMetrics

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_lists_every_exported_metric_and_no_other():
    text = README.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(ciliate_[a-z0-9_]+)` \|", section, re.M))
    exported = set()
    for family in AgentMetrics().registry.collect():
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert listed == exported, f"missing from README: {sorted(exported - listed)}; not exported: {sorted(listed - exported)}"
