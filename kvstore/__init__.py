"""kvstore: cluster state shared between the nodes' agents through etcd.

Each agent runs one `Cluster`. Through it the agent gets cluster-wide
identities (the same label set has the same number on every node), and
publishes its endpoints (IP -> identity) and its node record, while it
watches the other nodes' (`Cluster.view`, `on_view`). It does I/O (etcd via
aetcd, one lease file); it imports no other ciliate package.

Key layout (values are UTF-8; JSON is compact, no spaces):

  ciliate/state/identities/v1/id/<id>             JSON sorted label list,
                                                  e.g. ["k8s:app=x","k8s:io.kubernetes.pod.namespace=default"]
  ciliate/state/identities/v1/labels/<canonical>  "<id>"; canonical = sorted labels
                                                  joined by ";", each label's "\\"
                                                  and ";" escaped with "\\"
  ciliate/state/identities/v1/refs/<id>/<node>    "" under <node>'s lease
  ciliate/state/nodes/v1/<node>                   {"name": .., "ip": .., "pod_cidr": ..}
                                                  under the node's lease
  ciliate/state/ip/v1/<ip>                        {"identity": int, "node": str}
                                                  under the publishing node's lease

Identities 256..65535 live in etcd; the reserved ones (1..8) are local
constants and never stored. An id key and its labels key are created
together in one transaction, and never outlive each other on purpose.

How it holds together:
- Allocation (kvstore/identities.py): read labels/<L>; if it names N,
  txn [value(id/N) == L] -> put id/N (same value, new mod_revision) + this
  node's ref; else txn [id/c and labels/L absent] -> put all three for a
  random free candidate c. Retried on a lost race, bounded.
- References: refs/<id>/<node> lives under the node's lease, so a dead
  node's references go one lease TTL after its last keepalive. Releasing
  deletes only this node's ref.
- GC (kvstore/gc.py): every agent, no leader. An id with no refs is a
  candidate remembered with its mod_revision and the local monotonic time;
  after `gc_grace` unreferenced at the same mod_revision it is deleted in a
  txn conditioned on that mod_revision. Any new reference rewrites id/N,
  so a reference taken during the grace, or racing the delete, wins. No
  timestamps are stored in etcd: clocks and a slow etcd cannot cause flaps.
- Lease (kvstore/session.py): granted with `lease_ttl`, kept alive every
  TTL/3, its id saved in <state_dir>/kvstore-lease.json (0600). A restarted
  agent adopts a still-living lease: same keys, same refs, no churn. Keys
  the previous run left that the new one does not declare again within
  `restore_grace` (endpoints gone, identities released while it was down)
  are deleted then.
- Publishing (kvstore/publishing.py): desired local state (node, endpoints,
  refs) is kept in memory and reconciled into etcd (read, diff, apply with
  mod_revision-guarded txns) on every change, on a new lease (everything is
  re-put under it), when etcd answers again, when the watch sees one of our
  keys vanish, and periodically.
- Watching (kvstore/watching.py): one list + watch of ciliate/state/;
  resumes from the last revision + 1 after a failure, relists after a
  compaction (or if etcd's history went backwards / another cluster).
- Conflicts are reported (status()["conflicts"]), not fought: an IP key
  another node published is not overwritten; it is taken once freed.
- The gRPC channel runs on an event loop of its own thread (kvstore/etcd.py
  says why); everything the agent sees runs on the agent's loop.

Faults:
- etcd unreachable: allocate_identity raises KvstoreUnavailable within
  about `op_timeout`; set_endpoint / remove_endpoint / release_identity
  record the desired state and return; the view keeps the last known
  remote state. When etcd answers again everything is re-published.
- Lease expired meanwhile (this node cut off from a living etcd for more
  than a TTL, or revoked): a new lease is granted and the node record,
  endpoints and identity refs are re-published under it, keeping the
  identity numbers when nobody took them.
- Another agent killed: its keys stay until its lease expires, then the
  watch removes them from the view.
- etcd restarted with its data: etcd restores leases with a full TTL; the
  watch resumes from its revision.

Defaults (kvstore/cluster.py): lease_ttl 900 s (Cilium's 15 min), keepalive
every TTL/3, op_timeout 2 s, gc_grace max(2 x lease_ttl, 60 s), gc_interval
gc_grace/4 within 1 s..5 min, restore_grace 120 s.

Modules: cluster (Cluster: tasks and the agent's API), config (EtcdConfig,
--kvstore-opt), errors, model (NodeInfo, RemoteEndpoint, ClusterView),
layout (keys and values), identities (allocation, refs, GC transactions),
gc (pure GC bookkeeping), mirror (pure: events -> view), publishing
(desired -> etcd), session (lease), watching (list + watch), etcd (the
aetcd connection), timing (backoff, bounded waits).

Public names are re-exported below.
"""

from kvstore.cluster import Cluster, default_gc_grace, default_gc_interval
from kvstore.config import EtcdConfig, parse_kvstore_opts
from kvstore.errors import KvstoreConfigError, KvstoreError, KvstoreUnavailable
from kvstore.model import ClusterView, NodeInfo, RemoteEndpoint

__all__ = [
    "Cluster",
    "ClusterView",
    "EtcdConfig",
    "KvstoreConfigError",
    "KvstoreError",
    "KvstoreUnavailable",
    "NodeInfo",
    "RemoteEndpoint",
    "default_gc_grace",
    "default_gc_interval",
    "parse_kvstore_opts",
]
