"""The `ciliate` command line: one entry point, subcommands registered by the
modules that own them (policy tools, agent client commands, demo)."""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Sequence

# Each module adds its subcommands and sets `func` on its parsers; `func`
# takes the parsed namespace and returns the process exit code. Modules are
# imported by name, and only those owning the command asked for: an offline
# `ciliate policy trace` must not load the agent, its API models and its HTTP
# client (that tripled its start-up time).
_POLICY_TOOLS = ("agent.cli.policy_commands", "agent.cli.policy_diff")
_AGENT_COMMANDS = "agent.cli.agent_commands"  # the agent's client commands, and the daemon (agent_daemon.py)
_DEMO = "demo.command"
_ALL = (*_POLICY_TOOLS, _AGENT_COMMANDS, _DEMO)  # registration order: `policy get` joins the tools' parser
_OFFLINE_POLICY = frozenset({"validate", "trace", "diff", "test", "suggest"})


def _modules_for(argv: Sequence[str]) -> tuple[str, ...]:
    words = [a for a in argv if not a.startswith("-")]
    first = words[0] if words else None
    if first == "policy" and len(words) > 1 and words[1] in _OFFLINE_POLICY:
        # `diff` joins the `policy` group policy_commands creates; trace and
        # validate do not need the diff machinery (15 ms of imports).
        return _POLICY_TOOLS if words[1] == "diff" else _POLICY_TOOLS[:1]
    if first == "demo":
        return (_DEMO,)
    if first in {"agent", "status", "endpoint", "identity", "bpf", "monitor", "fqdn"}:
        return (_AGENT_COMMANDS,)
    return _ALL  # help, `policy get`, a typo: every command, so argparse lists them all


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or (given the argv it will parse)
    with only the modules owning its command; an unknown command gets them
    all, so argparse's error lists every choice."""
    parser = argparse.ArgumentParser(prog="ciliate", description="L7 network policy with Envoy and eBPF")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _modules_for(argv) if argv is not None else _ALL:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Without `argv` this is the process's own entry point
    (the console script, `python -m agent.cli`): the process exits when it
    returns, and the cycle collector is told so (see _as_process)."""
    if argv is None:
        return _as_process(sys.argv[1:])
    return _run(list(argv))


def _as_process(argv: list[str]) -> int:
    """main() for the process's own command line; see main()."""
    _without_pydantic_plugins()
    # The cycle collector's walks cost a short command an eighth of its time
    # for nothing. What importing the command modules allocates lives as
    # long as the process (modules, classes, functions): no walks while they
    # are imported (~10 ms of a `policy trace`), and what they built is
    # frozen out of every later walk. When the command is done, what is left
    # is frozen too, so the interpreter's collections at exit walk nothing
    # (20-30 ms; the memory goes back with the process). Only here: freezing
    # is process-wide, and an in-process caller (a test) lives on.
    gc.disable()
    try:
        parser = build_parser(argv)
    finally:
        gc.enable()
    gc.freeze()
    try:
        return _run(argv, parser)
    finally:
        gc.freeze()


def _without_pydantic_plugins() -> None:
    """ciliate ships no pydantic plugins and needs none, so it runs without:
    pydantic would look for them (the `pydantic` entry-point group) at its
    first model build, reading every installed distribution's metadata
    (~10 ms of a `policy trace`). An explicit PYDANTIC_DISABLE_PLUGINS wins
    (set it empty to have them looked for)."""
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


def _run(argv: list[str], parser: argparse.ArgumentParser | None = None) -> int:
    parser = parser or build_parser(argv)
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
