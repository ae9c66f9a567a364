"""What the compiler states about its ipcache beside the table (the index
by identity, the prefixes changed since the previous state), checked
against the table itself: the xDS view and the datapath's delta writes rely
on both, so a wrong fact would leave the kernel or Envoy on stale entries."""

from __future__ import annotations

from policy.compiled import CompiledState


def assert_ipcache_facts(state: CompiledState, prev: CompiledState | None) -> None:
    by_ident: dict[int, set] = {}
    for net, ident in state.ipcache.items():
        by_ident.setdefault(ident, set()).add(net)
    index = state.ipcache_by_identity()
    assert index is not None, "the compiler states its index"
    assert {i: set(nets) for i, nets in index.items()} == by_ident
    if prev is None or prev is state:
        return
    changes = state.ipcache_changes_since(prev.revision)
    if changes is None:
        return  # not known (rebuilt): consumers compare whole, which is always right
    differs = {n for n in set(state.ipcache) | set(prev.ipcache) if state.ipcache.get(n) != prev.ipcache.get(n)}
    assert set(changes) == differs, (sorted(map(str, changes)), sorted(map(str, differs)))
    assert state.ipcache_changes_since(prev.revision - 1 if prev.revision > 1 else 10**9) is None, "only from the base it was counted from"
