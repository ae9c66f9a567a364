"""The `ciliate` command line (`python -m agent.cli`): the entry point
(ciliate.py), the agent and its client commands (agent_commands.py), the
offline policy tools (policy_commands.py) and the compose demo's attach loop
(compose_attach.py)."""

from agent.cli.ciliate import build_parser, main

__all__ = ["build_parser", "main"]
