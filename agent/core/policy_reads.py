"""Every policy's status and the rule-feature counts, as reads of the agent's
state, kept between reads while nothing they come from changed.

Each metrics scrape (the `ciliate_policies` and `ciliate_policy_rules`
gauges) and each pass of the Kubernetes status write-back asks for them;
with a thousand policies computing them held the event loop 5-15 ms, and a
policy change that arrived meanwhile waited (bench_k8s's kernel p99). What
they come from:
- the book's mapping of policies in force: a new one after any change to
  the book (problems, shadowing and Service notes included);
- the last compiled state and the policies it was compiled from: replaced
  by each regeneration that applies;
- compile errors and each endpoint's live state (replaced, never changed
  in place): small, compared by value.
Reads only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.core.endpoint_table import EndpointTable
from agent.core.memo import Memo
from agent.core.models import PolicyList
from agent.core.policy_book import PolicyBook
from agent.core.policy_status import policy_statuses
from policy.features import rule_features
from policy.model import Policy

if TYPE_CHECKING:
    from agent.core.regenerator import Regenerator


class PolicyReads:
    def __init__(self, book: PolicyBook, table: EndpointTable, regenerator: Callable[[], Regenerator | None]) -> None:
        self._book = book
        self._table = table
        self._regenerator = regenerator
        self._statuses: Memo[PolicyList] = Memo()
        self._features: Memo[dict[str, int]] = Memo()

    def statuses(self) -> PolicyList:
        book, regen = self._book, self._regenerator()
        errors = regen.compile_step.compile_errors if regen else {}
        live = {i: lv for i in self._table.ids() if (lv := self._table.live(i)) is not None}

        def compute() -> PolicyList:
            statuses = policy_statuses(
                book.in_force(),
                book.problems(),
                errors,
                live,
                regen.applied_revision if regen else 0,
                book.shadowed(),
                regen.last_state if regen else None,
                applied=regen.applied_policies if regen else {},
                service_notes=book.service_notes(),
            )
            return PolicyList(revision=regen.applied_revision if regen else 0, policies=statuses)

        same = (book.in_force(), regen.last_state if regen else None, regen.applied_policies if regen else None)
        return self._statuses.get(same, (tuple(errors.items()), tuple(live.items())), compute)

    def features(self) -> dict[str, int]:
        """Rules in force by the parts of the language they use."""
        book = self._book
        return self._features.get(
            (book.in_force(),), (), lambda: rule_features([p for p in book.written() if isinstance(p, Policy)])
        )
