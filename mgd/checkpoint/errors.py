"""The one error type of checkpoint handling: a user-facing, single-line message."""

from __future__ import annotations

import re

from ..errors import UserError

__all__ = ["CheckpointError", "short_exception"]


class CheckpointError(UserError):
    """A user-facing problem with a checkpoint or an output path (one line, see mgd.errors)."""


def short_exception(exc: BaseException, limit: int = 160) -> str:
    """One-line, bounded description of an exception from a third-party loader."""
    text = re.sub(r"\s+", " ", str(exc)).strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text else name

