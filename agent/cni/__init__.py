"""`ciliate-cni`, the CNI plugin (`python -m agent.cni`): ADD/DEL/CHECK
(plugin.py), network configuration and environment (config.py), CNI error
codes (errors.py), delegated IPAM and its result (ipam.py), what each
address family gets (addressing.py), the veth plumbing (net.py; IPv6's in
net6.py, the node's gateway device in host_device.py, sysctls in
sysctl.py) and the CNI result (result.py)."""
