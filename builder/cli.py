"""The console script `builder` (pyproject's entry point): the command line door lives in
builder/doors/cli.py; this name stays so `builder.cli:main` keeps working."""

from builder.doors.cli import main

__all__ = ["main"]
