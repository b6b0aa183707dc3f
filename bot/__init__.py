"""Dunbot: collects overdue B2B payments by email."""

__version__ = "0.1.0"
