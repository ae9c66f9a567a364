"""xDS: the ADS gRPC server and the rendering of compiled L7 policy into Envoy
resources. Network I/O lives in server.py and accesslog.py only; the rest is
pure (render, serialize, snapshot, protocol sessions) or in-memory (cache).

Public names are imported from their modules, e.g.::

    from xds.cache import SnapshotCache
    from xds.server import XdsServer
    from xds.render import Renderer, RenderParams, render
    from xds.accesslog import AccessLogServer, AccessLogEntry
    from xds.errors import NackError, AckTimeout, RenderError
"""
