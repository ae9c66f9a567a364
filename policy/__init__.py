"""Policy: load, validate, select and compile network policies. Pure: no I/O
beyond reading the policy files it is asked to load (policy/load.py); never
imports bcc, pyroute2, grpclib or aiohttp.

Modules, one job each:
  compiled  the CompiledState contract and the reference lookup (fixed)
  errors    the error hierarchy (PolicyError, PolicyErrors, TraceInputError)
  endpoint  Endpoint and label conventions (source prefixes, namespace)
  selector  label selectors and the identity index that resolves them
  identity  reserved identities, identity labels, IdentityAllocator
  proxyports  ProxyPortAllocator: one proxy port per redirect
  ipcache   prefix -> identity: longest-prefix match, an identity's addresses
  selectorcache  which selectors exist and which identities each selects
  model     the validated policy model the compiler reads
  api/      the accepted input, declared (pydantic; all validation lives here)
  parse     one Kubernetes object -> Policy (validated by api/, then converted)
  load      files and directories -> LoadResult (the only file I/O)
  merge     per-identity atoms -> disjoint entries and L7 peer rules
  resolve   selecting specs -> one identity's policy; per-endpoint proxy ports
  compiler  Compiler (incremental orchestration) and compile_state (one shot)
  trace     trace(): what the datapath and the proxy would do with a flow
"""

from policy.compiler import Compiler, compile_state
from policy.endpoint import Endpoint
from policy.errors import CiliateError, PolicyError, PolicyErrors, TraceInputError
from policy.identity import IdentityAllocator
from policy.load import LoadResult, load_paths, load_text
from policy.model import Policy
from policy.parse import parse_object
from policy.proxyports import ProxyPortAllocator, ProxyPortsExhausted
from policy.trace import HTTPRequest, Party, TraceResult, trace

__all__ = [
    "CiliateError",
    "Compiler",
    "Endpoint",
    "HTTPRequest",
    "IdentityAllocator",
    "LoadResult",
    "Party",
    "Policy",
    "PolicyError",
    "PolicyErrors",
    "ProxyPortAllocator",
    "ProxyPortsExhausted",
    "TraceInputError",
    "TraceResult",
    "compile_state",
    "load_paths",
    "load_text",
    "parse_object",
    "trace",
]
