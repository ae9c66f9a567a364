"""kubesim: a simulated Kubernetes API server, in process. A test double,
not Kubernetes: it lives under demo/ because `ciliate demo --k8s`
(demo/k8s_run.py, demo/kube.py) serves it to the real agent; tests/kubeapi,
tests/k8s and bench/bench_k8s.py use it too. The agent never imports it
and it imports no other project package (pyproject.toml's import-linter
contracts).

It speaks the real wire format (JSON over HTTP on 127.0.0.1, an ephemeral
port by default) so that the real `kubernetes` Python client and `kubectl`
can talk to it, for these kinds only:

- `cilium.io/v2` CiliumNetworkPolicy (namespaced) and
  CiliumClusterwideNetworkPolicy (cluster-scoped), both with a status subresource;
- `networking.k8s.io/v1` NetworkPolicy;
- core `v1` Namespace, Node, Pod and Service (each with a status subresource;
  a Node is stored as written: no kubelet registers or updates one);
- `discovery.k8s.io/v1` EndpointSlice (stored as written: no controller
  fills slices from a Service's selector, a test writes them).

What it implements:

- discovery: `/version`, `/api`, `/apis`, `/apis/<group>`, `/api/v1` and
  `/apis/<group>/<version>` resource lists (verbs, namespaced, kind,
  shortNames, categories, the `/status` subresources), and an empty
  `/openapi/v2` document (JSON, or protobuf when asked) for kubectl;
- get, list (`resourceVersion` in the list metadata, `labelSelector`,
  `fieldSelector` over the field labels the real server allows per kind, e.g.
  `spec.nodeName` for pods, `metadata.name`, `metadata.namespace`), create
  (with `generateName`), replace (PUT, 409 Conflict on a stale
  `resourceVersion`), patch (JSON merge patch; strategic merge patch for the
  built-in kinds, applied as a merge patch with its `$` directives dropped,
  so lists are replaced whole; 415 for custom resources as on a real server;
  JSON patch add/remove/replace/test), delete (with `preconditions`),
  deletecollection, and `kubectl apply`'s client-side GET + PATCH;
- the status subresource (GET/PUT/PATCH `.../<name>/status` changes only
  `status`; writes to the main resource keep the stored `status`);
- server-set metadata: `uid`, `creationTimestamp`, `resourceVersion` from one
  global counter (as etcd's revision), `generation` bumped when anything
  outside metadata/status changes (not on Namespaces); a write that changes
  nothing keeps the version;
- watch (`watch=1|true`): chunked JSON lines `{"type", "object"}`; with no
  `resourceVersion` (or "0") the current objects first as ADDED; from a
  `resourceVersion` the later events replayed from a bounded history;
  an object moving into or out of a selector's selection is ADDED/DELETED for
  that watch; `allowWatchBookmarks` (a BOOKMARK with the current version every
  `bookmark_interval` seconds of quiet); a version older than the history gets
  an ERROR event with a 410 `Expired` Status; `timeoutSeconds` ends the
  stream cleanly;
- namespaced objects need their Namespace to exist (the default, kube-system,
  kube-public and kube-node-lease namespaces exist from the start), and
  deleting a Namespace deletes its contents at once;
- errors as `Status` objects: 404 NotFound, 409 AlreadyExists / Conflict,
  422 Invalid (no name), 400 BadRequest (bad selector, body, namespace
  mismatch), 405 MethodNotAllowed, 410 Expired, 415 UnsupportedMediaType;
- test controls: `compact()` (every older version now gets 410),
  `drop_watches()` (cut open watch connections mid-stream, no clean end),
  `stall()`/`resume()` (a hung server: connections stay open, nothing is
  answered or sent),
  `stop()`/`start()` on the same port (objects and history survive, as with
  etcd behind a restarted API server), and `request_log` (method, path,
  query, status of every request).

What it does not implement: TLS, authentication, authorization (RBAC),
admission (defaulting, mutating and validating webhooks, quota), validation
against OpenAPI or CRD schemas (any object shape is stored), field managers
and server-side apply (`application/apply-patch+yaml` gets 415),
`managedFields`, `dryRun` (400), the refusal of an unconditional PUT (no
`resourceVersion`) of a custom resource (kubesim accepts it for every kind),
pagination (`limit`/`continue` are ignored: a list returns everything), `resourceVersionMatch` and consistent reads at an
old version (a list always returns the current state), `sendInitialEvents`
and streaming lists, finalizers, `deletionTimestamp` and graceful deletion
(delete is immediate), owner references and garbage collection, the
Terminating namespace phase, Table output (`kubectl get` without `-o` falls
back to its own printing), protobuf, CBOR and YAML bodies (JSON only), the
aggregated discovery format (clients fall back to the per-group documents),
OpenAPI schemas (`/openapi/v3` is 404, so kubectl falls back to
`/openapi/v2`, which serves a valid document that defines nothing: kubectl
then skips client-side validation and builds strategic merge patches from its
compiled-in types; no `--validate=false` needed), field selectors beyond the per-kind labels listed in
`resources.py`, other kinds and versions, and the `/api/v1/watch/...` paths.
"""

from .server import KubeAPIServer, RequestRecord
from .threaded import ThreadedKubeAPIServer

__all__ = ["KubeAPIServer", "RequestRecord", "ThreadedKubeAPIServer"]
