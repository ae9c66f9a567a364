"""Subcommands; see agent/cli.py for how they are registered."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this module's subcommands to the `ciliate` parser."""
