"""demo: the star-wars scenario on one machine: network namespaces for the
pods, the real agent, CNI plugin, eBPF datapath and Envoy, real HTTP requests.
Does I/O throughout (processes, namespaces, sockets)."""
