"""The `ciliate` command line: one entry point, subcommands registered by the
modules that own them (policy tools, agent client commands, demo)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agent.cli import agent_commands as cli_agent, policy_commands as cli_policy, policy_diff as cli_diff
from demo import command as demo_command

# Each module adds its subcommands and sets `func` on its parsers; `func`
# takes the parsed namespace and returns the process exit code.
_COMMAND_MODULES = (cli_policy, cli_diff, cli_agent, demo_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ciliate", description="L7 network policy with Envoy and eBPF")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `ciliate ... | head`: the reader left; say nothing more. Point
        # stdout at /dev/null so the interpreter's final flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
