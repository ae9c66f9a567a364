"""The agent's core: the Agent (agent.py), the endpoint table, its restore
and the changes made to it, the policy book, the regeneration queue and the
regenerator (with its compile step), policy status, the reports the API
reads, flows, metrics and the state store. It reaches the kernel, Envoy and
policy sources only through the protocols in ports.py (an import-linter
contract in pyproject.toml keeps it so); file I/O only through
state_store.py."""
