"""The `dunbot` command: each module below registers its commands on the one group."""

from bot.cli import cases, daemon, dunning, replies, web  # noqa: F401  (importing registers the commands)
from bot.cli.common import main

__all__ = ["main"]
