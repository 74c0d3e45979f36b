"""The one error type of checkpoint handling: a user-facing, single-line message."""

from __future__ import annotations

import re

__all__ = ["CheckpointError", "short_exception"]


class CheckpointError(Exception):
    """A user-facing problem with a checkpoint or an output path.

    The message is always a single line (newlines and runs of spaces are collapsed) that
    says what is wrong and, where possible, what to do about it.
    """

    def __init__(self, message: str):
        one_line = re.sub(r"\s+", " ", str(message)).strip()
        super().__init__(one_line)


def short_exception(exc: BaseException, limit: int = 160) -> str:
    """One-line, bounded description of an exception from a third-party loader."""
    text = re.sub(r"\s+", " ", str(exc)).strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text else name

