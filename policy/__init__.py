"""Policy: load, validate, select and compile network policies. Pure: no I/O
beyond reading the policy files it is asked to load; never imports bcc,
pyroute2, grpclib or aiohttp."""
