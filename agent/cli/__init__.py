"""The `ciliate` command line (`python -m agent.cli`): the entry point
(ciliate.py), the agent daemon (agent_daemon.py) and its client commands
(agent_commands.py), the offline policy tools (policy_commands.py) and the
compose demo's attach loop (compose_attach.py)."""

from typing import Any

__all__ = ["build_parser", "main"]


def __getattr__(name: str) -> Any:
    # Lazily: importing a sibling (log_setup, say) must not load the whole CLI.
    if name in __all__:
        from agent.cli import ciliate

        return getattr(ciliate, name)
    raise AttributeError(name)
