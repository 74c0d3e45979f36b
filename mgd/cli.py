"""Command-line plumbing shared by every entry point (``train_net.py`` and ``scripts/``): one-line
usage errors, one handler for user errors, and the exit codes.

A :class:`~mgd.errors.UserError` (every user-error class of the project derives from it) ends a
command with ``error: <message>`` on stderr and exit code 2 (:func:`run_cli`); anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence, TextIO

from .errors import UserError

__all__ = ["OneLineArgumentParser", "report_error", "run_cli"]

#: the exit code of a user error (argparse's for a usage error too)
USER_ERROR_EXIT = 2


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but usage errors are one ``error:`` line on stderr and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(USER_ERROR_EXIT, f"error: {message}; run {self.prog} --help for usage\n")


def report_error(error: UserError, file: Optional[TextIO] = None) -> int:
    """Print ``error: <message>`` (to stderr by default); return the exit code, 2."""
    print(f"error: {error}", file=file or sys.stderr, flush=True)
    return USER_ERROR_EXIT


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a UserError becomes ``error: <message>`` and exit code 2, Ctrl-C
    one line and exit code 130 (``main`` may catch it first to say more)."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
