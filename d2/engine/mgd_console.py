"""A readable screen, a complete log file: long listings go to ``log.txt`` only.

At the start of a run Detectron2 logs the environment table, the config file, the full config,
the model and, when a checkpoint is loaded, one line per tensor: ~1,000 lines on the screen
before the first iteration. :func:`quiet_console` sets up Detectron2's loggers exactly as
``default_setup`` does (it reuses the same ``setup_logger`` calls, so ``default_setup`` finds
them set up) and puts :class:`ConsoleSummary` on their screen handlers only:

* a multi-line message longer than ``MAX_LINES`` lines, or one of the set-up listings
  (environment, config file, full config, model), is shown as its first line plus
  ``[N lines in log.txt]``;
* the per-tensor loading lines (``c2_model_loading``) are counted and shown as one line when
  the listing ends.

The log file keeps every line. The MGD modules' own messages (``detectron2.mgd``) are never
shortened.
"""
import logging
import os
from typing import Optional

from detectron2.utils.logger import setup_logger

__all__ = ["ConsoleSummary", "quiet_console", "MAX_LINES"]

#: longer messages are summarised on the screen
MAX_LINES = 10
#: set-up listings summarised whatever their length (Detectron2's default_setup and trainer)
_LISTINGS = ("Environment info:", "Contents of args.config_file", "Running with full config:", "Model:\n")
_TENSOR_LOGGER = "detectron2.checkpoint.c2_model_loading"
_KEPT_LOGGER = "detectron2.mgd"


class ConsoleSummary(logging.Filter):
    """Filter for a screen handler: shortens long listings (see the module docstring).

    Args:
        handler: the screen handler it filters (summaries are written through it).
        log_file: where the full lines are, named in the summaries.
    """

    def __init__(self, handler: logging.Handler, log_file: str):
        super().__init__()
        self.handler = handler
        self.log_file = log_file
        self._tensors = 0  # per-tensor loading lines held back since the last shown record
        self._tensor_record: Optional[logging.LogRecord] = None

    def _write(self, record: logging.LogRecord, message: str) -> None:
        summary = logging.makeLogRecord(dict(record.__dict__, msg=message, args=None, exc_info=None))
        self.handler.emit(summary)

    def flush_tensors(self) -> None:
        """Show the held-back per-tensor listing as one line."""
        if self._tensors:
            self._write(self._tensor_record, f"Loaded {self._tensors} tensors of the checkpoint by name "
                                             f"[per-tensor listing in {self.log_file}]")
            self._tensors, self._tensor_record = 0, None

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it as usual
            return True
        if record.name == _TENSOR_LOGGER and " loaded from " in message and "\n" not in message:
            self._tensors += 1
            self._tensor_record = self._tensor_record or record
            return False
        self.flush_tensors()
        if record.name.startswith(_KEPT_LOGGER):
            return True
        lines = message.splitlines()
        if len(lines) > MAX_LINES or (len(lines) > 1 and message.startswith(_LISTINGS)):
            self._write(record, f"{lines[0].rstrip(':').rstrip()} [{len(lines) - 1} more lines in {self.log_file}]")
            return False
        return True


def _screen_handlers(logger: logging.Logger):
    import sys

    return [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
            and getattr(h, "stream", None) in (sys.stdout, sys.stderr)]


def quiet_console(output_dir: str, rank: int) -> None:
    """Set up the ``detectron2`` and ``fvcore`` loggers as ``default_setup(cfg, args)`` will
    (same ``setup_logger`` arguments, so its calls return these loggers) and summarise long
    listings on their screen handlers. Idempotent."""
    log_file = os.path.join(output_dir, "log.txt") if output_dir else "the log"
    for name in ("fvcore", "detectron2"):
        if name == "fvcore":
            logger = setup_logger(output_dir, distributed_rank=rank, name="fvcore")
        else:
            logger = setup_logger(output_dir, distributed_rank=rank)
        for handler in _screen_handlers(logger):
            if not any(isinstance(f, ConsoleSummary) for f in handler.filters):
                handler.addFilter(ConsoleSummary(handler, log_file))
