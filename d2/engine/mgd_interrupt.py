"""Ctrl-C during training: a consistent checkpoint of the last finished iteration.

``InterruptGuard`` is a trainer hook, placed right after Detectron2's ``LRScheduler`` hook.
A step changes the model, the optimizer and the scheduler in one short stretch: from the
optimizer's ``step`` (a pre-hook marks it) to the scheduler's step in ``LRScheduler.after_step``.
A Ctrl-C (SIGINT) inside that stretch is held until its end; anywhere else (data loading,
forward, backward, the matching pass, an evaluation) it stops the run at once, as usual. Either
way the model, optimizer, scheduler and loss scaler are those after ``completed``, the last
iteration whose update finished, and :meth:`save` writes them as ``model_<completed>.pth``
(with ``iteration``, as Detectron2's periodic checkpoints, so ``--resume`` continues at
``completed + 1``). A second Ctrl-C while the first is held stops at once. The line that
then ends ``train_net.py`` is :mod:`~detectron2.engine.mgd_interrupt_report`'s.
"""
import logging
import signal
import threading
from typing import Optional

from detectron2.engine.train_loop import HookBase

__all__ = ["InterruptGuard"]

logger = logging.getLogger("detectron2.mgd")


class InterruptGuard(HookBase):
    """Defers SIGINT inside the parameter update; records the last finished iteration."""

    def __init__(self):
        self.completed: Optional[int] = None  # the last iteration whose update finished
        self._updating = False
        self._pending = False
        self._previous_handler = None
        self._hook_handle = None

    def before_train(self):
        self.completed = self.trainer.start_iter - 1
        self._hook_handle = self.trainer.optimizer.register_step_pre_hook(self._update_starts)
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def after_step(self):
        # runs after LRScheduler.after_step: this iteration's update is complete
        self._updating = False
        self.completed = self.trainer.iter
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt

    def after_train(self):
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def _update_starts(self, optimizer, args, kwargs):
        self._updating = True

    def _on_sigint(self, signum, frame):
        if self._updating and not self._pending:
            self._pending = True  # finish this update, then stop (after_step)
            return
        raise KeyboardInterrupt

    def save(self, checkpointer) -> Optional[str]:
        """Save the state after ``completed`` as ``model_<completed>.pth`` (main process;
        atomic). Returns the file name, or None when no iteration finished in this process."""
        if self.completed is None or self.completed < self.trainer.start_iter:
            return None
        name = f"model_{self.completed:07d}"
        # the iteration to resume after: the pin reads ``iteration``, today's Detectron2 the
        # trainer's own state (its ``iter``, which may be the unfinished next one)
        self.trainer.iter = self.completed
        checkpointer.save(name, iteration=self.completed)
        return f"{name}.pth"
