"""The MGD matching schedule as a Detectron2 trainer hook, and the matching's checkpoint entry.

The rule (when a matching is due) is :mod:`mgd.schedule`'s. A resumed run continues with the
assignment its checkpoint holds (:class:`MatchingCheckpointable`, saved as ``mgd_matching``):
no matching runs that the schedule does not name, unless ``MGD.REMATCH_ON_RESUME`` (the
original's behaviour) or the checkpoint holds none (written before assignments were saved).
"""
import hashlib
import json
import logging
import os
import time
from typing import Dict, Optional

import torch

from detectron2.engine.mgd_matching_pass import run_matching_pass
from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm
from detectron2.utils.mgd_compat import training_data_iter, unwrap_model

from mgd.matching import plan_matching_pass, random_assignment
from mgd.schedule import MatchingSchedule
from mgd.seeding import RANDOM_ASSIGNMENT, derive_seed
from mgd.stream import ResumableStream

__all__ = ["MGDMatchingHook", "MatchingCheckpointable", "unwrap_model", "assignment_digest"]

logger = logging.getLogger("detectron2.mgd")


def assignment_digest(distiller) -> str:
    """A short hash of all current assignments (equal on every rank after a matching)."""
    h = hashlib.sha1()
    for name, assignment in sorted(distiller.assignments().items()):
        h.update(name.encode())
        h.update(assignment.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class MGDMatchingHook(HookBase):
    """Before the scheduled steps: margins (first step of the run) and a matching pass.

    A resumed run continues with its checkpoint's assignment (:class:`MatchingCheckpointable`
    restores it and :attr:`restored`); with ``MGD.REMATCH_ON_RESUME`` it recomputes it at its
    first iteration, as the original did.

    The pass draws the batches of ``mgd.matching.plan_matching_pass`` from the trainer's
    training data iterator, the same number on every rank (so the training steps after it see
    the batches that follow), and runs both networks in eval mode without grad on the images
    that enter the costs. With ``MGD.MATCHING_RANKS "all"`` (default) the assignment is solved
    from every rank's images, ``(UPDATE_ITER + 1) x IMS_PER_BATCH / MGD.REFERENCE_WORLD_SIZE``
    of them at any process count (COCO: 2002, the reference's, in 126 iterations); with
    "rank0" from rank 0's ``UPDATE_ITER + 1`` batches (the original's rule). Each matching
    logs, once, how many images from which ranks it was solved from. It logs progress with an
    ETA whenever the log has been silent for ~30 s (``mgd_progress.PROGRESS``), and one line
    at its end; it puts the mean matched cost per position into the event storage as
    ``mgd/cost_<position>`` (plus ``mgd/matching_iter`` and
    ``mgd/matching_seconds``; so they reach metrics.json and TensorBoard) and, on the main
    process, appends one JSON line per update to ``OUTPUT_DIR/mgd_matching.json``.

    Why the heavy pass sits in ``before_step``, against :class:`HookBase`'s convention that
    ``before_step`` takes negligible time:

    * The step's distillation loss reads the margins and the assignment, so they must be in
      place before ``run_step`` of the scheduled iteration. At the first iteration of a run
      nothing earlier in this process built the margins (recomputed from the frozen teacher at
      every start; a resumed run checks them against its checkpoint's, bit for bit), and
      there is no preceding ``after_step``. ``before_step`` of iteration ``i`` is the one
      place where "before step ``i``", the rule of :meth:`mgd.schedule.MatchingSchedule.due`,
      holds for both the first and the later updates.
    * The convention protects :class:`~detectron2.engine.hooks.IterationTimer`, which times a
      step from its own ``before_step`` to its ``after_step``. ``MGDTrainer.build_hooks``
      inserts this hook ahead of the timer (only the step's seeding comes first), so the
      pass runs before the step timer starts: it is not in the ``time`` scalar nor in "Overall training speed" (the final
      "Total training time" counts it under "on hooks", past the timer's warm-up). The
      printed training ETA (``time`` x iterations left) therefore leaves out the passes
      still to come; the pass logs its own ETA, and ``mgd/matching_seconds`` records each
      pass's duration.
    """

    def __init__(self, cfg):
        #: when matchings fire (validated when the config was read: mgd_config_checks.check_config)
        self.schedule = MatchingSchedule.from_config(cfg)
        #: batches per rank and the images that enter the costs (mgd.matching.MatchingPass)
        self.plan = plan_matching_pass(int(cfg.MGD.UPDATE_ITER), cfg.SOLVER.IMS_PER_BATCH,
                                       cfg.MGD.REFERENCE_WORLD_SIZE, comm.get_world_size(), cfg.MGD.MATCHING_RANKS)
        self.output_dir = cfg.OUTPUT_DIR
        #: every update done by this hook: {"iteration", "costs", "images", "images_per_rank",
        #: "ranks", "seconds", "assignment_digest"}
        self.history = []
        #: the last matching's scalars, logged at every step (see after_step)
        self._latest_scalars = {}
        self.rematch_on_resume = bool(cfg.MGD.REMATCH_ON_RESUME)
        #: "matching" (solved on the schedule) or "random" (drawn once: MGD.ASSIGNMENT)
        self.assignment = cfg.MGD.ASSIGNMENT
        #: the passes' own data stream under MGD.MATCHING_DATA "separate" (set by the trainer),
        #: else None: they draw from the training stream
        self.stream: Optional[ResumableStream] = None
        #: what a resumed run's checkpoint held (MatchingCheckpointable): {"record", "margins"}
        self.restored: Optional[dict] = None

    def before_step(self):
        # heavy on scheduled iterations, by design: see the class docstring
        trainer = self.trainer
        model = unwrap_model(trainer.model)
        first = trainer.iter == trainer.start_iter
        if first:
            model.update_margins()
            logger.info(f"MGD: margins computed from the teacher's norms at iteration {trainer.iter}")
            if self.restored is not None:
                self._check_restored_margins(model.distiller.margins())
        if self.assignment == "random":  # drawn once, never re-solved
            if first and self.restored is None:
                self.draw_random_assignment()
            return
        restored = self.restored is not None and not self.rematch_on_resume
        if self.schedule.due(trainer.iter, trainer.start_iter, assignment_restored=restored):
            self.update_matching()
        elif first:
            record = self.restored["record"]
            upcoming = self.schedule.next_scheduled(trainer.iter, trainer.max_iter)
            logger.info(f"MGD: continuing with the checkpoint's channel assignment (matching of iteration "
                        f"{record.get('iteration')}, digest {assignment_digest(model.distiller)}); next matching "
                        + (f"at iteration {upcoming}" if upcoming is not None else "none (no more in this run)"))

    def _check_restored_margins(self, margins: Dict[str, torch.Tensor]) -> None:
        """The margins follow from the frozen teacher: recomputed, they equal the saved ones."""
        saved = self.restored.get("margins") or {}
        differ = [name for name, m in margins.items()
                  if name in saved and not torch.equal(saved[name].to(m.device), m)]
        if differ:
            logger.warning(f"MGD: the margins recomputed at resume differ from the checkpoint's at {differ}: "
                           "the teacher's weights are not those the run started with")

    def after_step(self):
        # The pinned EventStorage forgets every scalar at each step, and the writers only run
        # every 20 steps: put the last matching's figures again at every step, so metrics.json
        # and TensorBoard record them (mgd/matching_iter says which update they come from).
        for name, value in self._latest_scalars.items():
            self.trainer.storage.put_scalar(name, value, smoothing_hint=False)

    def draw_random_assignment(self):
        """``MGD.ASSIGNMENT random``: every position's assignment drawn at random
        (:func:`mgd.matching.random_assignment`) from the run's data seed, the same on every
        rank; recorded in mgd_matching.json like a matching, without costs."""
        trainer = self.trainer
        distiller = unwrap_model(trainer.model).distiller
        generator = torch.Generator().manual_seed(derive_seed(trainer.data_seed, RANDOM_ASSIGNMENT))
        sparse = distiller.reducer == "sm"
        distiller.load_assignments({
            distiller.position_names[i]: random_assignment(distiller.student_channels[i],
                                                           distiller.teacher_channels[i], sparse, generator)
            for i in distiller.distilled_positions})
        digest = assignment_digest(distiller)
        self._latest_scalars = {"mgd/matching_iter": trainer.iter}
        self._record({"iteration": trainer.iter, "assignment": "random", "assignment_digest": digest})
        logger.info(f"MGD: a random channel assignment (MGD.ASSIGNMENT random, digest {digest}) drawn at iteration "
                    f"{trainer.iter}; it is never re-solved")

    def _record(self, record: dict) -> None:
        """Keep ``record`` and (main process) append it to OUTPUT_DIR/mgd_matching.json."""
        self.history.append(record)
        if comm.is_main_process() and self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "mgd_matching.json"), "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def update_matching(self):
        trainer = self.trainer
        model = unwrap_model(trainer.model)
        iteration, total, rank = trainer.iter, self.plan.batches, comm.get_rank()
        start = time.perf_counter()
        # every rank draws all the plan's batches (the streams stay aligned), and keeps the
        # images of its share of the pass
        data = self.stream if self.stream is not None else training_data_iter(trainer)
        costs = run_matching_pass(model, data, total,
                                  images_taken=lambda index: self.plan.images_taken(rank, index),
                                  label=f"MGD matching at iteration {iteration}", mode_of=trainer.model)
        statistic = model.distiller.last_statistic
        seconds = time.perf_counter() - start
        self._latest_scalars = {f"mgd/cost_{name}": cost for name, cost in costs.items()}
        self._latest_scalars.update({"mgd/matching_iter": iteration, "mgd/matching_seconds": seconds})
        digest = assignment_digest(model.distiller)
        record = {"iteration": iteration, "costs": costs, "images": statistic.images,
                  "images_per_rank": list(statistic.images_per_rank), "ranks": statistic.ranks,
                  "seconds": round(seconds, 3), "assignment_digest": digest}
        logger.info(
            f"MGD matching at iteration {iteration} done in {seconds:.1f}s: solved from {statistic.describe()}, "
            f"{total} batches per rank (rank {rank}, assignment digest {digest}); mean matched cost: "
            + ", ".join(f"{k} {v:.4f}" for k, v in costs.items())
        )
        self._record(record)


class MatchingCheckpointable:
    """The matching state of an MGD run as a checkpoint entry (``mgd_matching``).

    Holds the assignments (``{position: LongTensor}``), the margins they were used with, the
    last matching's record and scalars (so metrics.json continues with them) and, under
    ``MGD.MATCHING_DATA separate``, the passes' own stream's position. Restoring it lets a
    resumed run continue with the assignment instead of a new matching pass.
    """

    def __init__(self, trainer, hook: MGDMatchingHook):
        self.trainer, self.hook, self.model = trainer, hook, trainer.model

    def state_dict(self) -> dict:
        distiller = unwrap_model(self.model).distiller
        record = self.hook.history[-1] if self.hook.history else (self.hook.restored or {}).get("record")
        state = {"assignments": {k: v.detach().cpu() for k, v in distiller.assignments().items()},
                 "margins": {k: v.detach().cpu() for k, v in distiller.margins().items()},
                 "record": record, "scalars": dict(self.hook._latest_scalars)}
        if self.hook.stream is not None:  # the passes' own stream, after the saved iteration
            state["stream"] = self.hook.stream.state_dict(self.trainer.iter)
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.hook.stream is not None and state.get("stream"):
            self.hook.stream.load_state_dict(state["stream"])
        if not state.get("assignments"):
            return
        unwrap_model(self.model).distiller.load_assignments(state["assignments"])
        self.hook.restored = {"record": state.get("record") or {}, "margins": state.get("margins")}
        self.hook._latest_scalars = dict(state.get("scalars") or {})
