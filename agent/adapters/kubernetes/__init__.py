"""Kubernetes mode: the agent's policies, namespace labels and pod labels from
the API server, and each policy's per-node status written back.

- `reflector.py`: list + watch of one kind, in a thread (the blocking
  `kubernetes` client), resumed from the last resourceVersion, bookmarks,
  relist on 410 with only the difference delivered, jittered backoff;
- `kinds.py`: the kinds the agent reads and how the client lists them;
- `objects.py`: a policy object through the same `policy/` parser as files,
  under a key no file policy can take;
- `pod_labels.py`: a Pod and its Namespace as endpoint labels, and the
  labels a Pod may not set itself (namespace, service account, cluster);
- `node_labels.py`: this node's Node object as the node's labels (host
  policies' nodeSelector, fromNodes/toNodes);
- `pod_addresses.py`: a Pod's `status.podIPs`, one address per family;
- `node_status.py`: what `status.nodes[<node>]` says, and the coalescing,
  rate-limited writer of it;
- `source.py`: the ClusterSource port (agent/core/ports.py) over all of them;
- `client.py`: the API client from a kubeconfig, a URL or the pod's
  in-cluster service account.
"""
