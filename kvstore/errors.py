"""The kvstore error hierarchy, in one place.

    KvstoreError                 anything this package raises on purpose
    ├── KvstoreConfigError       bad --kvstore-opt input or etcd.config file;
    │                            the message names the option or file, the
    │                            field and the reason
    └── KvstoreUnavailable       etcd could not be reached (or did not answer
                                 within the operation timeout, or this node
                                 holds no lease yet); raised promptly, the
                                 caller may retry later

Errors from aetcd and gRPC never leave the package: kvstore/etcd.py turns
them into these. No I/O.
"""

from __future__ import annotations


class KvstoreError(Exception):
    """Base class of every error the kvstore package raises."""


class KvstoreConfigError(KvstoreError):
    """The kvstore configuration is unusable (which option or file, which
    field, why)."""


class KvstoreUnavailable(KvstoreError):
    """etcd is unreachable or too slow right now."""
