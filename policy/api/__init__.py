"""The accepted policy input, declared: one pydantic model per shape.

Modules, one concept each (bottom to top):
  problems   how a problem is worded and located (pydantic loc -> field path)
  base       Strict: strict types, unknown fields refused
  selectors  label selectors; reserved-entity peer selectors
  peers      endpoints, entities, CIDRs and CIDR sets, per direction
  http       HTTP rules (RE2-checked) and the L7 kinds we refuse
  ports      ports, ranges, protocols; toPorts items
  rule       a Cilium rule: subject, ingress/egress (deny) items
  netpol     NetworkPolicy's spec
  documents  the three kinds as whole objects; DOCUMENTS by kind

Validation lives here, so one pass reports every problem of a document;
policy/parse.py turns a validated document into policy.model. Pure.
"""

from policy.api.documents import DOCUMENTS, Document
from policy.api.problems import policy_errors, type_name

__all__ = ["DOCUMENTS", "Document", "policy_errors", "type_name"]
