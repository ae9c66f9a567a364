"""The sidecar's error: Envoy could not be started, became unready, or was
given a bootstrap it cannot use. No I/O.

EnvoyError is still declared in xds/errors.py, whose hierarchy another change
is reshaping; sidecar/ code and its callers name it from here, so moving the
class into this module is a one-line change there.
"""

from xds.errors import EnvoyError

__all__ = ["EnvoyError"]
