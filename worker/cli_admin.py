"""Administration commands: integration lifecycle, mappings, import, explain, sync (issue 4)."""

from __future__ import annotations

import argparse


def register(
    commands: argparse._SubParsersAction, apps_commands: argparse._SubParsersAction
) -> None:
    """Add this module's subcommands to ``provisioner`` and ``provisioner apps``."""
