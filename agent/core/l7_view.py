"""What the Envoy configuration depends on: two compiled states with equal
views render the same listeners and rules, so the second needs no publish.
Pure: reads the state it is handed, no I/O."""

from __future__ import annotations

from policy.compiled import IDENTITY_ANY, CompiledState
from policy.identity import FIRST_CIDR_IDENTITY, FIRST_LABEL_IDENTITY


def l7_view(state: CompiledState) -> tuple:
    """Everything the Envoy configuration is rendered from; equal views need no publish."""
    l7 = tuple((i, ep.l7, ep.audit) for i, ep in sorted(state.endpoints.items()) if ep.l7)
    if not l7:
        return ()
    # Receivers' rules bind egress listeners (policy.compiled.ReceiverRules) and
    # depend on the receivers' L3/L4 entries too, not only on their L7 part.
    return (l7, l7_ipcache(state, l7), tuple(sorted(state.all_receiver_rules().items())))


def l7_ipcache(state: CompiledState, l7: tuple) -> object:
    """The part of the ipcache the rendered L7 configuration depends on.

    Envoy's rules name peers by address (xds/render.py turns each identity
    into its ipcache prefixes), so a change elsewhere in the ipcache, e.g. a
    pod of another node no HTTP rule selects coming or going, must not cost
    a publish to Envoy. A pod identity's addresses are its own /32s; a
    reserved or CIDR identity's address space is its prefixes minus every
    more specific entry, so when a rule names one, all of the ipcache counts."""
    idents = {i for _, pols, _ in l7 for pol in pols for rule in pol.peer_rules for i in rule.identities}
    idents.discard(IDENTITY_ANY)
    if any(not FIRST_LABEL_IDENTITY <= i < FIRST_CIDR_IDENTITY for i in idents):
        return state.ipcache
    index = state.ipcache_by_identity()
    if index is None:
        return frozenset((net, i) for net, i in state.ipcache.items() if i in idents)
    # The compiler's index: the rule's identities only, not a walk of every
    # remote pod at each cluster event.
    return tuple((i, index.get(i, frozenset())) for i in sorted(idents))
