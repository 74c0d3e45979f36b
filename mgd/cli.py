"""Command-line plumbing shared by the entry points: one-line usage errors and exit codes."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from .errors import UserError

__all__ = ["OneLineArgumentParser", "run_cli"]


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but usage errors are one ``error:`` line on stderr and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"error: {message}; run {self.prog} --help for usage\n")


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a UserError becomes ``error: <message>`` and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130

