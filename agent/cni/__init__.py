"""`ciliate-cni`, the CNI plugin (`python -m agent.cni`): ADD/DEL/CHECK
(plugin.py), network configuration and environment (config.py), CNI error
codes (errors.py), delegated IPAM (ipam.py) and the veth plumbing (net.py)."""
