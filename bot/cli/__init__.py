"""The `dunbot` command: each module below registers its commands on the one group, imported when one of its
commands runs (bot.cli.common.COMMANDS)."""

from bot.cli.common import main

__all__ = ["main"]
