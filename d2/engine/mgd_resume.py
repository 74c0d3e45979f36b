"""What a checkpoint holds beyond the weights, so that a resumed run continues the same training.

A checkpoint of iteration ``i`` (periodic, final, or written on Ctrl-C) carries, besides the
model and upstream's checkpointables (iteration, optimizer, scheduler):

* ``data_stream``: the training stream's seed and the batches it had delivered by the end of
  iteration ``i`` (:class:`mgd.stream.ResumableStream`; the matching passes draw from it too),
  so the resumed run reads the images the uninterrupted run would have, in the same order and
  with the same augmentation;
* ``loss_normalizer``: RetinaNet's running foreground count, which divides its detection losses,
  of every process (each keeps its own: they are gathered at the end of every iteration);
* ``event_history``: the last :data:`HISTORY_KEPT` values of every logged scalar, so the
  smoothed values that metrics.json and the console show continue as if uninterrupted;
* ``grad_scaler`` (float16 training) and, for MGD, ``mgd_matching`` (``mgd_hooks``).

The random generators need no saved state: :class:`StepSeedHook` reseeds them at every step
from the data seed, the process and the iteration (:mod:`mgd.seeding`), and each sample's
augmentation is seeded by its position in the stream.

Every ``state_dict`` here describes the trainer's current ``iter`` as a finished iteration
(``mgd_interrupt.InterruptGuard.save`` sets it to the last finished one before saving), using
what :class:`IterationEndHook` recorded at the end of that iteration.
"""
import logging
from typing import Dict, List, Optional

import torch

from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm
from detectron2.utils.mgd_compat import get_loss_normalizer, set_loss_normalizer, unwrap_model

from mgd.seeding import seed_step
from mgd.stream import ResumableStream, StreamLayoutError

__all__ = ["StepSeedHook", "IterationEndHook", "DataStreamCheckpointable", "LossNormalizerCheckpointable",
           "EventHistoryCheckpointable", "ScalerCheckpointable", "HISTORY_KEPT"]

logger = logging.getLogger("detectron2.mgd")

#: scalar values kept per name: the smoothing window of Detectron2's writers (20)
HISTORY_KEPT = 20


def _retinanet(model):
    """The RetinaNet whose loss normaliser is saved: the student of an MGD model."""
    model = unwrap_model(model)
    return getattr(model, "s_net", model)


class StepSeedHook(HookBase):
    """Before every step: Python's, NumPy's and torch's generators seeded from (data seed,
    rank, iteration) (:func:`mgd.seeding.seed_step`), so a step's random draws do not depend
    on what ran before it in this process."""

    def __init__(self, seed_of):
        self.seed_of = seed_of  # () -> the run's data seed (restored on resume)

    def before_step(self):
        seed_step(self.seed_of(), comm.get_rank(), self.trainer.iter)


class IterationEndHook(HookBase):
    """At the end of every iteration (before any checkpoint of it is written), records what a
    checkpoint of that iteration holds: the streams' positions and every process's loss
    normaliser. Restores the scalar history of a resumed run before its first step."""

    def __init__(self, streams: List[ResumableStream], model):
        self.streams, self.model = streams, model
        #: {iteration: [loss normaliser of rank 0, 1, ...]}, the last two iterations
        self.normalizers: Dict[int, List[float]] = {}
        self.restored_history: Optional[Dict[str, list]] = None

    def before_train(self):
        if self.restored_history:
            histories = self.trainer.storage.histories()
            for name, values in self.restored_history.items():
                for value, iteration in values:
                    histories[name].update(float(value), iteration)

    def after_step(self):
        iteration = self.trainer.iter
        for stream in self.streams:
            stream.mark(iteration)
        local = get_loss_normalizer(_retinanet(self.model))
        self.normalizers[iteration] = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        for old in [i for i in self.normalizers if i < iteration - 1]:
            del self.normalizers[old]


class DataStreamCheckpointable:
    """The training stream's seed and position after the saved iteration (``data_stream``)."""

    def __init__(self, trainer, stream: ResumableStream):
        self.trainer, self.stream = trainer, stream

    def state_dict(self) -> dict:
        return self.stream.state_dict(self.trainer.iter)

    def load_state_dict(self, state: dict) -> None:
        try:
            self.stream.load_state_dict(state)
        except StreamLayoutError as error:
            # another process count or batch: continue after as many images, in a new order
            images = int(state["batches"]) * int(state["batch_size"]) * int(state["world_size"])
            per_step = self.stream.batch_size * self.stream.world_size
            self.stream.load_state_dict({**state, **self.stream.layout(), "batches": images // per_step})
            logger.warning(f"{error}: the data stream continues after the same number of images "
                           f"({images}), but not with the images the saved run would have read next")
            return
        logger.info(f"Data stream restored: continues at batch {self.stream.start} of data seed {self.stream.seed}")


class LossNormalizerCheckpointable:
    """RetinaNet's ``loss_normalizer`` (the running mean of foreground anchors that divides its
    detection losses; a plain attribute upstream, outside the state_dict) of every process:
    ``{"value": rank 0's, "per_rank": [...]}``. Each process resumes from its own; with another
    process count, every process from rank 0's. For MGD, the student's."""

    def __init__(self, trainer, end_hook: IterationEndHook):
        self.trainer, self.end_hook = trainer, end_hook

    def _net(self):
        return _retinanet(self.trainer.model)

    def state_dict(self) -> dict:
        per_rank = self.end_hook.normalizers.get(self.trainer.iter)
        if per_rank is None:  # no iteration finished in this process: what it started with
            per_rank = [get_loss_normalizer(self._net())] * comm.get_world_size()
        return {"value": per_rank[0], "per_rank": list(per_rank)}

    def load_state_dict(self, state: dict) -> None:
        if "value" not in state:
            return
        per_rank = state.get("per_rank") or []
        own = len(per_rank) == comm.get_world_size()
        if not own and comm.get_world_size() > 1:
            logger.info(f"The checkpoint's loss normalisers are of {len(per_rank) or 'one'} process(es), this run "
                        f"has {comm.get_world_size()}: every process resumes from rank 0's")
        set_loss_normalizer(self._net(), per_rank[comm.get_rank()] if own else state["value"])


class EventHistoryCheckpointable:
    """The last :data:`HISTORY_KEPT` values of every scalar in the event storage up to the
    saved iteration, ``{name: [[value, iteration], ...]}`` (``event_history``)."""

    def __init__(self, trainer, end_hook: IterationEndHook):
        self.trainer, self.end_hook = trainer, end_hook

    def state_dict(self) -> dict:
        storage = getattr(self.trainer, "storage", None)
        if storage is None:
            return {}
        saved = {}
        for name, history in storage.histories().items():
            values = [[float(v), it] for v, it in history.values() if it <= self.trainer.iter]
            if values:
                saved[name] = values[-HISTORY_KEPT:]
        return saved

    def load_state_dict(self, state: dict) -> None:
        self.end_hook.restored_history = dict(state) or None


class ScalerCheckpointable:
    """The GradScaler as a checkpointable: saved as ``grad_scaler``, restored on resume.

    A checkpoint written without loss scaling (float32 or bfloat16) holds an empty state;
    resuming it with float16 loss scaling starts the scaler afresh, with one line.
    """

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if not state and self.scaler.is_enabled():
            logger.info("The checkpoint has no loss-scaler state (saved without float16 AMP): starting afresh")
            return
        self.scaler.load_state_dict(state)
