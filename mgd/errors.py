"""The one base class of user-facing errors, shared by the core, the overlay and every entry point.

A ``UserError`` is a problem with what the user gave (a file, a flag, a config key, a dataset):
its message is one line that says what is wrong and what to run next. Entry points turn it
into ``error: <message>`` on stderr and exit code 2 (``mgd.cli.run_cli``, ``train_net.py``);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

__all__ = ["UserError", "one_line"]


def one_line(message: object) -> str:
    """``message`` with newlines and runs of whitespace collapsed to single spaces."""
    return re.sub(r"\s+", " ", str(message)).strip()


class UserError(Exception):
    """A user-facing problem, reported as a single line (see the module docstring)."""

    def __init__(self, message: object):
        super().__init__(one_line(message))
