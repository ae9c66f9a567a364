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

import importlib
from typing import Any

# Where each public name lives. Imported on first use (PEP 562): a module
# that needs only policy.labels (the agent's API models, the CNI plugin, every
# `ciliate status`) must not load the parser, pydantic's policy schema and the
# compiler with it.
_HOME = {
    "Compiler": "policy.compiler",
    "compile_state": "policy.compiler",
    "Endpoint": "policy.endpoint",
    "CiliateError": "policy.errors",
    "PolicyError": "policy.errors",
    "PolicyErrors": "policy.errors",
    "TraceInputError": "policy.errors",
    "IdentityAllocator": "policy.identity",
    "LoadResult": "policy.load",
    "load_paths": "policy.load",
    "load_text": "policy.load",
    "Policy": "policy.model",
    "parse_object": "policy.parse",
    "ProxyPortAllocator": "policy.proxyports",
    "ProxyPortsExhausted": "policy.proxyports",
    "HTTPRequest": "policy.trace",
    "Party": "policy.trace",
    "TraceResult": "policy.trace",
    "trace": "policy.trace",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'policy' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


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
