"""Progress at least every ~30 s of wall time, whatever the iteration speed.

Detectron2 prints its metrics every 20 iterations: minutes apart when an iteration is slow
(COCO sizes on a CPU), and nothing at all while the first iteration runs. ``ProgressHook``
adds, on the main process, when the ``detectron2`` log has been silent for ``period`` seconds:

* after a step, a line ``progress: iteration i/N, elapsed, s/iter, ETA``;
* from a heartbeat thread, while one iteration (with its matching pass, or the final
  evaluation) runs longer than that, ``progress: iteration i/N running for ..., ETA``.

Any line of the ``detectron2`` logger (Detectron2's metric lines, the matching pass's and
the evaluation's own progress lines) resets the clock, so these lines only fill silences.
``PROGRESS`` is that clock; the MGD matching pass prints its ETA on it too.
The period is ``MGD_PROGRESS_SECONDS`` from the environment (default 30).
"""
import datetime
import logging
import os
import threading
import time
from typing import Callable, Optional

from detectron2.engine.train_loop import HookBase

__all__ = ["ProgressClock", "ProgressHook", "PROGRESS", "format_seconds", "progress_period"]

logger = logging.getLogger("detectron2.mgd")

def progress_period() -> float:
    """Seconds between progress lines: ``MGD_PROGRESS_SECONDS``, default 30."""
    try:
        return max(0.1, float(os.environ.get("MGD_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class ProgressClock:
    """When the last progress line was printed; ``due()`` once ``period`` seconds have passed."""

    def __init__(self, period: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        self.period = progress_period() if period is None else period
        self.clock = clock
        self.last = clock()

    def due(self) -> bool:
        return self.clock() - self.last >= self.period

    def mark(self) -> None:
        self.last = self.clock()


#: the clock of this process's progress lines (training steps and matching passes)
PROGRESS = ProgressClock()


class _MarkOnRecord(logging.Handler):
    """Resets a ProgressClock at every record of the logger it is attached to."""

    def __init__(self, clock: ProgressClock):
        super().__init__(level=logging.INFO)
        self.clock = clock

    def emit(self, record):
        self.clock.mark()


class ProgressHook(HookBase):
    """Time-based progress lines for training (see the module docstring)."""

    def __init__(self, clock: ProgressClock = PROGRESS, heartbeat: bool = True):
        self.clock = clock
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread = None
        self._marker = _MarkOnRecord(clock)
        self._start = self._step_start = 0.0
        self._done = 0  # iterations finished in this process

    def before_train(self):
        self.clock.period = progress_period()
        self._start = self._step_start = self.clock.clock()
        self.clock.mark()
        logging.getLogger("detectron2").addHandler(self._marker)
        if self.heartbeat:
            self._thread = threading.Thread(target=self._beat_forever, name="mgd-progress", daemon=True)
            self._thread.start()

    def after_step(self):
        # the next iteration starts now: its matching pass (before_step) counts as part of it
        self._step_start = self.clock.clock()
        self._done += 1
        if self.clock.due():
            logger.info(self.step_line())
            self.clock.mark()

    def after_train(self):
        self._stop.set()
        logging.getLogger("detectron2").removeHandler(self._marker)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _rate(self):
        """Mean wall seconds per iteration in this process (matching passes included)."""
        return (self._step_start - self._start) / self._done if self._done else None

    def _eta(self) -> str:
        rate = self._rate()
        left = self.trainer.max_iter - (self.trainer.iter + 1)
        return f"ETA {format_seconds(rate * left)}" if rate is not None else "ETA after the first iteration"

    def step_line(self) -> str:
        t = self.trainer
        rate = self._rate()
        return (f"progress: iteration {t.iter + 1}/{t.max_iter}, {format_seconds(self.clock.clock() - self._start)} "
                f"elapsed, {rate:.2f} s/iter, {self._eta()}")

    def beat(self) -> None:
        """One heartbeat: a line if the current step has run for ``period`` without one (a step
        shorter than that ends with :meth:`after_step`'s line, which has the s/iter)."""
        running = self.clock.clock() - self._step_start
        if not self.clock.due() or running < self.clock.period:
            return
        t = self.trainer
        logger.info(f"progress: iteration {t.iter + 1}/{t.max_iter} running for {format_seconds(running)}, "
                    f"{format_seconds(self.clock.clock() - self._start)} elapsed, {self._eta()}")
        self.clock.mark()

    def _beat_forever(self):
        while not self._stop.wait(min(5.0, self.clock.period / 3)):
            try:
                self.beat()
            except Exception:  # never let the progress thread disturb training
                return
