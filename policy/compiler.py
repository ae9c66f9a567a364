"""The compiler: (policies, endpoints, identities) -> CompiledState, incrementally.

Only the orchestration lives here, split the way Cilium splits pkg/policy:
  selectorcache  which selectors exist and which identities each selects
  ipcache        prefix -> identity (endpoints, host, CIDR identities)
  identity       reserved identities, identity labels, the allocator
  resolve        the specs selecting an identity -> its policy; proxy ports
  proxyports     the proxy-port allocator

Policy is computed per identity (endpoints sharing labels share it; within
one compile, identities selected by the same specs share one merge) and then
stamped per endpoint with proxy ports. A policy change re-merges only the
identities it selected before or after; an endpoint change that only adds or
removes a peer patches that peer's entries in the identities whose rules
name it (a full re-merge when L7 is involved). Pure: no I/O.

Entities: `all` is identity 0; `world` is every world identity the stack
uses plus every CIDR identity, `world-ipv4`/`world-ipv6` that family's part
(policy/families.py); `cluster` is every local label identity plus host,
remote-node, init, health, unmanaged, kube-apiserver and ingress. CIDR peers
select the CIDR identities of the policy prefixes inside them (minus
`except`), and a default route (0.0.0.0/0, ::/0) also selects its family's
world identity. Endpoint and host /32s and /128s take precedence in the
ipcache, so CIDR rules never select local endpoints, of either family (as in
Cilium).

`stack` is the families the node runs; the agent compiles with Stack.DUAL.
Prefixes of either family are compiled in every stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from policy.compiled import HOST_ENDPOINT_ID, CompiledState, EndpointPolicy, RedirectKey
from policy.endpoint import Endpoint
from policy.families import IPAddress, IPNetwork, Stack
from policy.identity import IdentityAllocator, identity_labels, reserved_labels, selectable_labels
from policy.ipcache import REMOTE_OWNER, IPCache, TableFacts
from policy.remote_endpoints import Gone, RemoteEndpoints
from policy.model import EndpointPeer, Peer, Policy, PolicySpec
from policy.named_ports import NamedPortIndex, uses_names
from policy.proxyports import ProxyPortAllocator
from policy.resolve import (
    UNSELECTED,
    host_policy,
    IdentityPolicy,
    endpoint_policy,
    merge_specs,
    patch_peers,
    redirect_keys,
)
from policy.selectorcache import SelectorCache

# (policy key, spec index) of every spec selecting an identity: the memo key
# under which identities selected by the same specs share one merge.
Selecting = tuple[tuple[str, int], ...]
# ... and with the names the identity serves when those specs name ports.
Memo = Selecting | tuple[Selecting, frozenset[tuple[str, frozenset[tuple[int, int]]]]]


class Compiler:
    def __init__(
        self,
        identities: IdentityAllocator | None = None,
        proxy_ports: ProxyPortAllocator | None = None,
        host_ips: Iterable[IPAddress] = (),
        allow_localhost: bool = True,
        stack: Stack = Stack.IPV4,
    ) -> None:
        self.identities = identities if identities is not None else IdentityAllocator()
        self.proxy_ports = proxy_ports if proxy_ports is not None else ProxyPortAllocator()
        self.allow_localhost = allow_localhost
        self.stack = stack
        self._ipcache = IPCache(self.identities, host_ips, stack)
        self._selectors = SelectorCache(self._ipcache.cidr_ids, stack)
        self._policies: dict[str, Policy] = {}
        # Per policy: its RuleRef name and (subject selector, spec) pairs.
        self._meta: dict[str, tuple[str, tuple[tuple[EndpointPeer, PolicySpec], ...]]] = {}
        # policy key -> identities it selects; identity -> policy keys
        self._subjects: dict[str, frozenset[int]] = {}
        self._id_policies: dict[int, set[str]] = {}
        self._endpoints: dict[int, Endpoint] = {}
        self._ep_identity: dict[int, int] = {}
        self._identity_eps: dict[int, set[int]] = {}
        self._remote = RemoteEndpoints()  # other nodes' endpoints (cluster mode)
        self._id_policy: dict[int, IdentityPolicy] = {}
        self._ep_policy: dict[int, EndpointPolicy] = {}
        self._ep_redirects: dict[int, set[RedirectKey]] = {}
        # Identity -> peers whose membership changed while its specs did not:
        # compile() patches just those peers' entries instead of re-merging.
        self._peer_dirty: dict[int, set[int]] = {}
        # Named ports: who serves which names, and the policies naming a
        # port (their subjects re-merge when the names served change).
        self._named = NamedPortIndex()
        self._named_policies: set[str] = set()
        # The host endpoint (host policies): the node's labels, None while
        # the node is not an endpoint; re-merged when its policies change.
        self._host_labels: dict[str, str] | None = None
        self._host_dirty = False
        # Nodes (fromNodes/toNodes): remote node identities -> labels, and
        # this node's labels when it is not a host endpoint.
        self._remote_nodes: dict[int, dict[str, str]] = {}
        self._node_labels: dict[str, str] | None = None
        self._dirty_ids: set[int] = set()
        self._dirty_eps: set[int] = set()
        self._removed_eps: set[int] = set()
        self._labels_dirty = True
        self._label_view: dict[int, frozenset[str]] = {}
        self._revision = 0
        self._state: CompiledState | None = None
        self._changed: frozenset[int] = frozenset()

    # ------------------------------------------------------------ inputs

    def upsert_policy(self, policy: Policy) -> None:
        old = self._policies.get(policy.key)
        if old == policy:
            return
        if old is not None:
            self._unregister(old)
        self._policies[policy.key] = policy
        self._register(policy)

    def delete_policy(self, key: str) -> None:
        old = self._policies.pop(key, None)
        if old is not None:
            self._unregister(old)
            del self._meta[key]

    def upsert_endpoint(self, ep: Endpoint) -> None:
        old = self._endpoints.get(ep.id)
        if old == ep:
            return
        ident = self.identities.for_label_set(identity_labels(ep.labels))
        old_ident = self._ep_identity.get(ep.id)
        self._endpoints[ep.id] = ep
        self._removed_eps.discard(ep.id)
        if old_ident != ident:
            if old_ident is not None:
                self._detach(ep.id, old_ident)
            self._ep_identity[ep.id] = ident
            eps = self._identity_eps.setdefault(ident, set())
            eps.add(ep.id)
            if len(eps) == 1 and not self._remote.holds(ident):
                self._identity_added(ident)
        # One ipcache entry per family: the pod's /32 and /128 both carry its
        # identity, and each outranks any CIDR prefix covering it.
        for family in ("ipv4", "ipv6"):
            before = getattr(old, family) if old is not None else None
            self._ipcache.upsert_endpoint(ep.id, before, getattr(ep, family), ident)
        self._names_changed(self._named.set(ep.id, ident, ep.named_ports))
        self._dirty_eps.add(ep.id)

    def delete_endpoint(self, endpoint_id: int) -> None:
        ep = self._endpoints.pop(endpoint_id, None)
        if ep is None:
            return
        self._detach(endpoint_id, self._ep_identity.pop(endpoint_id))
        self._dirty_eps.discard(endpoint_id)
        self._removed_eps.add(endpoint_id)
        self._names_changed(self._named.set(endpoint_id, None, ()))
        for addr in ep.addresses:
            self._ipcache.delete_endpoint(endpoint_id, addr)

    def _names_changed(self, idents: set[int]) -> None:
        """Some identities serve other names now: the policies naming ports
        re-merge for everyone they select (ingress names are the subject's,
        egress names the peers')."""
        if not idents:
            return
        for key in self._named_policies:
            self._dirty_ids |= self._subjects.get(key, frozenset())

    def set_host(self, labels: Mapping[str, str] | None) -> None:
        """Make the node an endpoint (HOST_ENDPOINT_ID) whose policy is the
        host policies selecting these node labels; None: it is none."""
        labels = dict(labels) if labels is not None else None
        if labels == self._host_labels:
            return
        if labels is None:
            self._removed_eps.add(HOST_ENDPOINT_ID)
        self._host_labels = labels
        self._host_dirty = True
        self._selectors.set_nodes(self._remote_nodes, self._own_node_labels())

    def set_host_ips(self, host_ips: Iterable[IPAddress]) -> None:
        self._ipcache.set_host_ips(host_ips)

    def set_remote(
        self,
        endpoints: Mapping[IPAddress, tuple[int, frozenset[str]]],
        node_ips: Iterable[IPAddress] = (),
        node_labels: Mapping[IPAddress, Mapping[str, str]] | None = None,
        named_ports: Mapping[IPAddress, tuple[tuple[str, int, int], ...]] | None = None,
        changed: Iterable[IPAddress] | None = None,
        nodes_unchanged: bool = False,
    ) -> None:
        """The rest of the cluster, whole: other nodes' endpoints (address ->
        the identity the cluster allocated and its labels) and the other
        nodes' addresses (`remote-node`). Only the difference to the last
        call is applied, so a policy selecting a remote identity is patched
        like one selecting a local pod. `changed`, when the caller knows it:
        the only addresses whose entry may differ from the last call's (the
        rest is not compared: at 50,000 remote pods that comparison was most
        of the cost of one pod event). `nodes_unchanged`: the other nodes are
        those of the last call (`node_ips` and `node_labels` are not read)."""
        for step in self._remote.update(endpoints, changed):
            if isinstance(step, Gone):
                if not step.present:
                    self._ipcache.delete_endpoint(REMOTE_OWNER, step.addr)
                if step.last and not self._identity_eps.get(step.identity):
                    self._identity_removed(step.identity)
                continue
            if self.identities.labels_of(step.identity) != step.labels:
                self.identities.adopt(step.labels, step.identity)
            self._ipcache.upsert_endpoint(REMOTE_OWNER, None, step.addr, step.identity)
            if step.first and not self._identity_eps.get(step.identity):
                self._identity_added(step.identity)
        # The ports other nodes' endpoints serve by name, which egress rules
        # towards them resolve `port: http` by (keyed apart from local ids).
        self._names_changed(self._named.set_remote(self._remote.identity_of, named_ports or {}, only=changed))
        if nodes_unchanged:
            return
        # A node that published labels gets an identity by them (nodes with
        # the same labels share it), which fromNodes/toNodes select.
        labelled = {a: dict(ls) for a, ls in (node_labels or {}).items() if ls}
        node_ids = {a: self.identities.for_node(ls) for a, ls in labelled.items()}
        self._ipcache.set_remote_node_ips(node_ips, node_ids)
        remote_nodes = {node_ids[a]: labelled[a] for a in node_ids}
        if remote_nodes != self._remote_nodes:
            # Node identities are shown with their labels; a pod coming or
            # going changes no label (its identity's come with _identity_added),
            # and rebuilding every identity's labels per pod event grew the
            # cost of one event with the cluster.
            self._remote_nodes = remote_nodes
            self._selectors.set_nodes(self._remote_nodes, self._own_node_labels())
            self._labels_dirty = True

    def set_node_labels(self, labels: Mapping[str, str] | None) -> None:
        """This node's labels (for fromNodes/toNodes) when it is not a host
        endpoint; set_host's labels take precedence."""
        self._node_labels = dict(labels) if labels is not None else None
        self._selectors.set_nodes(self._remote_nodes, self._own_node_labels())

    def _own_node_labels(self) -> Mapping[str, str] | None:
        return self._host_labels if self._host_labels is not None else self._node_labels

    # ------------------------------------------------------------ queries

    @property
    def host_ips(self) -> frozenset[IPAddress]:
        return self._ipcache.host_ips

    @property
    def policies(self) -> dict[str, Policy]:
        return dict(self._policies)

    def identity_of_endpoint(self, endpoint_id: int) -> int | None:
        return self._ep_identity.get(endpoint_id)

    def endpoints_of_policy(self, key: str) -> frozenset[int]:
        """Endpoints the policy selects (it contributes to their EndpointPolicy),
        HOST_ENDPOINT_ID among them when it is a host policy selecting the node."""
        out: set[int] = set()
        for ident in self._subjects.get(key, ()):
            out |= self._identity_eps.get(ident, set())
        if self.host_selected_by(key):
            out.add(HOST_ENDPOINT_ID)
        return frozenset(out)

    @property
    def state(self) -> CompiledState | None:
        """The last compiled state (None before the first compile)."""
        return self._state

    def changed_endpoints(self) -> frozenset[int]:
        """Endpoint ids whose EndpointPolicy differs from the previous compile
        (including endpoints that were deleted)."""
        return self._changed

    # ------------------------------------------------------------ policies

    def _register(self, policy: Policy) -> None:
        self._meta[policy.key] = (policy.ref_name, tuple((EndpointPeer(spec.subject), spec) for spec in policy.specs))
        for peer in _selectors_of(policy):
            self._selectors.add(peer, policy.key)
        self._retarget_cidrs(policy.cidrs(), add=True)
        if any(uses_names(spec) for spec in policy.specs):
            self._named_policies.add(policy.key)
        if any(spec.node_subject is not None for spec in policy.specs):
            self._host_dirty = True
        self._set_subjects(policy.key, self._subjects_of(policy.key))

    def _unregister(self, policy: Policy) -> None:
        self._set_subjects(policy.key, frozenset())
        self._named_policies.discard(policy.key)
        if any(spec.node_subject is not None for spec in policy.specs):
            self._host_dirty = True
        for peer in _selectors_of(policy):
            self._selectors.drop(peer, policy.key)
        self._retarget_cidrs(policy.cidrs(), add=False)

    def _retarget_cidrs(self, nets: set[IPNetwork], add: bool) -> None:
        """Count a policy's prefixes in or out: linear in len(nets) (the
        ipcache and the selector cache each touch a prefix once)."""
        if add:
            moved = self._ipcache.add_prefixes(nets)
            self._selectors.add_cidrs(moved)
        else:
            moved = self._ipcache.remove_prefixes(nets)
            self._selectors.remove_cidrs(moved)
        if moved:
            self._labels_dirty = True

    def _subjects_of(self, key: str) -> frozenset[int]:
        members = self._selectors.members
        out: set[int] = set()
        for subject, _ in self._meta[key][1]:
            out |= members[subject]
        return frozenset(out)

    def _set_subjects(self, key: str, new: frozenset[int]) -> None:
        old = self._subjects.get(key, frozenset())
        for ident in old - new:
            self._id_policies[ident].discard(key)
        for ident in new - old:
            self._id_policies.setdefault(ident, set()).add(key)
        if new:
            self._subjects[key] = new
        else:
            self._subjects.pop(key, None)
        self._dirty_ids |= old | new

    def _flush_stale(self) -> None:
        """Selectors whose members changed: re-subject the policies using them
        as a subject, patch the peers of the rest."""
        resubject: set[str] = set()
        for peer, changed in self._selectors.take_stale().items():
            for key in self._selectors.users(peer):
                meta = self._meta.get(key)
                if meta is None:
                    continue
                if any(subject == peer for subject, _ in meta[1]):
                    resubject.add(key)
                else:
                    for ident in self._subjects.get(key, ()):
                        self._peer_dirty.setdefault(ident, set()).update(changed)
        for key in resubject:
            if key in self._policies:
                self._set_subjects(key, self._subjects_of(key))

    # ------------------------------------------------------------ identities

    def _identity_added(self, ident: int) -> None:
        label_set = self.identities.labels_of(ident)
        self._selectors.add_identity(ident, selectable_labels(label_set))
        self._label_view[ident] = label_set
        self._labels_dirty = True
        self._dirty_ids.add(ident)

    def _detach(self, endpoint_id: int, ident: int) -> None:
        eps = self._identity_eps.get(ident)
        if eps is None:
            return
        eps.discard(endpoint_id)
        if eps:
            return
        del self._identity_eps[ident]
        self._id_policy.pop(ident, None)
        self._peer_dirty.pop(ident, None)
        self._dirty_ids.discard(ident)
        if not self._remote.holds(ident):
            self._identity_removed(ident)

    def _identity_removed(self, ident: int) -> None:
        """No endpoint here or on another node has this identity any more."""
        self._label_view.pop(ident, None)
        self._labels_dirty = True
        self._selectors.remove_identity(ident)
        self._id_policy.pop(ident, None)
        self._peer_dirty.pop(ident, None)
        self._dirty_ids.discard(ident)

    def _selecting(self, ident: int) -> Selecting:
        keys = self._id_policies.get(ident)
        if not keys:
            return ()
        members = self._selectors.members
        out: list[tuple[str, int]] = []
        for key in sorted(keys):
            specs = self._meta[key][1]
            if len(specs) == 1:
                out.append((key, 0))  # the policy selects it, so its only spec does
            else:
                out.extend((key, i) for i, (subject, _) in enumerate(specs) if ident in members[subject])
        return tuple(out)

    def _identity_policy(self, ident: int, memo: dict[Memo, IdentityPolicy] | None = None) -> IdentityPolicy:
        selecting = self._selecting(ident)
        if not selecting:
            return UNSELECTED
        named = any(key in self._named_policies for key, _ in selecting)
        # Ingress names resolve against the identity's own ports: identities
        # share a merge only when they also serve the same names.
        memo_key: Memo = (selecting, frozenset(self._named.of(ident).items())) if named else selecting
        if memo is not None and memo_key in memo:
            return memo[memo_key]
        specs = [(key, self._meta[key][0], self._meta[key][1][idx][1]) for key, idx in selecting]
        if named:
            out = merge_specs(
                specs, self._selectors.members, self.allow_localhost, self._named.of(ident), self._named.of, self._named.identities
            )
        else:
            out = merge_specs(specs, self._selectors.members, self.allow_localhost)
        if memo is not None:
            memo[memo_key] = out
        return out

    def _patched_policy(self, ident: int, peers: set[int], memo: dict[Memo, IdentityPolicy]) -> IdentityPolicy:
        old = self._id_policy.get(ident)
        if old is not None:
            specs = (self._meta[key][1][idx][1] for key, idx in self._selecting(ident))
            patched = patch_peers(old, specs, self._selectors.members, peers)
            if patched is not None:
                return patched
        return self._identity_policy(ident, memo)

    # ------------------------------------------------------------ compile

    def compile(self) -> CompiledState:
        if self._state is not None and not (
            self._selectors.has_stale or self._dirty_ids or self._dirty_eps or self._removed_eps or self._ipcache.dirty
            or self._host_dirty
        ):
            self._changed = frozenset()
            return self._state
        self._ipcache.release_unused()
        self._flush_stale()
        rebuild_eps = set(self._dirty_eps)
        memo: dict[Memo, IdentityPolicy] = {}
        for ident in self._dirty_ids:
            eps = self._identity_eps.get(ident)
            if eps:
                self._id_policy[ident] = self._identity_policy(ident, memo)
                rebuild_eps |= eps
        for ident, peers in self._peer_dirty.items():
            eps = self._identity_eps.get(ident)
            if eps and ident not in self._dirty_ids:
                self._id_policy[ident] = self._patched_policy(ident, peers, memo)
                rebuild_eps |= eps
        resolved: list[tuple[Endpoint, int, IdentityPolicy]] = []
        for ep_id in sorted(rebuild_eps):
            ep = self._endpoints.get(ep_id)
            if ep is None:
                continue
            ident = self._ep_identity[ep_id]
            ip = self._id_policy.get(ident)
            if ip is None:
                ip = self._id_policy[ident] = self._identity_policy(ident)
            resolved.append((ep, ident, ip))
        if self._state is None:
            # Every endpoint is built in the first compile, so this is where
            # ports saved by an earlier run for redirects that no policy makes
            # any more are freed (before allocating, so they cannot starve it).
            self.proxy_ports.retain({k for ep, _, ip in resolved for k in redirect_keys(ep.id, ip)})
        # Build everything first, commit after: if proxy ports run out, nothing
        # is half-applied and the next compile retries the same work (ports
        # already handed out are stable per RedirectKey, so a retry reuses them).
        built = {ep.id: endpoint_policy(ep, ident, ip, self.proxy_ports) for ep, ident, ip in resolved}
        if self._host_labels is not None:
            # One merge, redone whenever anything changed: its peers' members
            # may have moved, and a policy selecting it does not make it dirty.
            built[HOST_ENDPOINT_ID] = (self._host_policy(), set())
        changed = self._commit(built)
        prev = self._state
        ipcache = self._ipcache.table(prev.ipcache if prev is not None else None)
        labels = self._identity_labels() if (self._labels_dirty or prev is None) else prev.identity_labels
        self._host_dirty = False
        self._dirty_ids.clear()
        self._peer_dirty.clear()
        self._dirty_eps.clear()
        self._removed_eps.clear()
        self._labels_dirty = False
        self._changed = frozenset(changed)
        if prev is not None and not changed and ipcache is prev.ipcache and (labels is prev.identity_labels or labels == prev.identity_labels):
            return prev
        self._revision += 1
        facts = TableFacts(ipcache, self._ipcache.by_identity(), prev.revision if prev is not None else 0, self._ipcache.last_changes)
        self._state = CompiledState(self._revision, dict(self._ep_policy), ipcache, labels, self.stack, ipcache_facts=facts)
        return self._state

    def _commit(self, built: dict[int, tuple[EndpointPolicy, set[RedirectKey]]]) -> set[int]:
        """Adopt the built endpoint policies, free the proxy ports of redirects
        gone; returns the endpoints whose policy changed."""
        changed: set[int] = set()
        for ep_id in self._removed_eps:
            if self._ep_policy.pop(ep_id, None) is not None:
                changed.add(ep_id)
            for rk in self._ep_redirects.pop(ep_id, set()):
                self.proxy_ports.release(rk)
        for ep_id, (new, keys) in built.items():
            for rk in self._ep_redirects.get(ep_id, set()) - keys:
                self.proxy_ports.release(rk)
            self._ep_redirects[ep_id] = keys
            if self._ep_policy.get(ep_id) != new:
                self._ep_policy[ep_id] = new
                changed.add(ep_id)
        return changed

    def _host_specs(self) -> list[tuple[str, str, PolicySpec]]:
        labels = self._host_labels or {}
        return [
            (key, ref_name, spec)
            for key, (ref_name, pairs) in sorted(self._meta.items())
            for _, spec in pairs
            if spec.node_subject is not None and spec.node_subject.matches(labels)
        ]

    def _host_policy(self) -> EndpointPolicy:
        return host_policy(self._host_specs(), self._selectors.members)

    def host_selected_by(self, key: str) -> bool:
        """Whether the policy `key` selects the host endpoint."""
        return self._host_labels is not None and any(k == key for k, _, _ in self._host_specs())

    def _identity_labels(self) -> dict[int, frozenset[str]]:
        out = reserved_labels()
        out.update(self._label_view)
        out.update(self._ipcache.cidr_labels())
        out.update({i: self.identities.labels_of(i) for i in self._remote_nodes})
        return out


def _selectors_of(policy: Policy) -> set[Peer]:
    out: set[Peer] = set()
    for spec in policy.specs:
        out.add(EndpointPeer(spec.subject))
        for rule in spec.rules:
            out.update(rule.peers)
    return out


def compile_state(
    policies: Iterable[Policy],
    endpoints: Iterable[Endpoint],
    identities: IdentityAllocator | None = None,
    proxy_ports: ProxyPortAllocator | None = None,
    host_ips: Iterable[IPAddress] = (),
    allow_localhost: bool = True,
    stack: Stack = Stack.IPV4,
    host_labels: Mapping[str, str] | None = None,
) -> CompiledState:
    """One-shot compile of a complete input (a fresh Compiler underneath);
    with `host_labels` the node is an endpoint with those labels."""
    c = Compiler(identities, proxy_ports, host_ips, allow_localhost, stack)
    c.set_host(host_labels)
    for p in policies:
        c.upsert_policy(p)
    for ep in endpoints:
        c.upsert_endpoint(ep)
    return c.compile()
