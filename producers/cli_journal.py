"""Journal commands: replay of a journal range and rebuild (issue 3)."""

from __future__ import annotations

import argparse


def register(
    commands: argparse._SubParsersAction, apps_commands: argparse._SubParsersAction
) -> None:
    """Add this module's subcommands to ``provisioner``."""
