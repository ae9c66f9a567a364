"""Bindings of the agent's ports (agent/ports.py) to the real policy/, redirect/ and xds/ modules."""
