"""Bindings of the agent's ports (agent/core/ports.py) to the real policy/, redirect/ and xds/ modules."""
