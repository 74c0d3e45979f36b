"""Trainer for MGD (and plain RetinaNet) runs, on GPUs (NCCL) or CPU processes (gloo).

``MGDTrainer`` is upstream's DefaultTrainer with:

* COCO evaluation (``COCOEvaluator``) for every ``DATASETS.TEST`` entry;
* DDP built the same way on every Detectron2 version (``mgd_compat.build_ddp``:
  ``find_unused_parameters=True``, ``broadcast_buffers=False``, no ``device_ids`` on CPU, so
  multi-process gloo runs work);
* the MGD matching hook (``mgd_hooks.MGDMatchingHook``) when the model is MGDRetinaNet;
* mixed precision under ``SOLVER.AMP.ENABLED`` (``run_step``: autocast to
  ``SOLVER.AMP.PRECISION``, by default float16 with a ``GradScaler`` on CUDA and bfloat16 on
  CPU; float16 always trains with the scaler, whose state is checkpointed);
* upstream's ``SOLVER.REFERENCE_WORLD_SIZE`` auto-scaling applied to the MGD schedule too
  (``scale_to_world_size``), and the distillation divisor (``MGD.REFERENCE_WORLD_SIZE``)
  stated once in the log;
* a training loader whose position is saved (``mgd_train_stream``), the generators reseeded
  at every step, and ``MGDCheckpointer`` (``mgd_checkpointer``): checkpoints read as data and
  loaded strictly, with upstream's checkpointables (whatever this Detectron2 saves: the
  iteration, optimizer and scheduler) plus what ``mgd_resume`` lists (data stream position,
  loss normalisers, scalar history, loss scaler, MGD matching), so a resumed run continues
  the same training;
* a progress line whenever the log has been silent for ~30 s (``mgd_progress``), and on
  Ctrl-C a checkpoint of the last finished iteration (``mgd_interrupt``; ``train`` saves it
  and re-raises the KeyboardInterrupt, ``interrupted_checkpoint`` names the file).

Where the pinned and today's Detectron2 differ, this module goes through
``detectron2.utils.mgd_compat``.
"""
import logging
import os
import time

import torch

from detectron2.data.mgd_train_stream import RESUMABLE_SAMPLERS, build_train_stream, data_seed
from detectron2.engine import hooks as d2_hooks
from detectron2.engine.defaults import DefaultTrainer
from detectron2.engine.mgd_checkpointer import MGDCheckpointer, strip_prefix
from detectron2.engine.mgd_hooks import MatchingCheckpointable, MGDMatchingHook
from detectron2.engine.mgd_interrupt import InterruptGuard
from detectron2.engine.mgd_progress import ProgressHook
from detectron2.engine.mgd_resume import (DataStreamCheckpointable, EventHistoryCheckpointable, IterationEndHook,
                                          LossNormalizerCheckpointable, ScalerCheckpointable, StepSeedHook)
from detectron2.engine.mgd_sync_check import ParameterDigestHook
from detectron2.modeling.meta_arch.mgd_detector import amp_dtype, autocast
from detectron2.utils import comm
from detectron2.utils.mgd_compat import build_ddp, coco_evaluator, ddp_built_by, inner_trainer, training_data_iter, \
    unwrap_model, write_metrics

from mgd.config import is_mgd_config
from mgd.matching import plan_matching_pass
from mgd.schedule import MatchingSchedule, scaled_update_iter
from mgd.seeding import MATCHING_STREAM, derive_seed
from mgd.stream import ResumableStream

__all__ = ["MGDTrainer", "MGDCheckpointer", "strip_prefix"]

logger = logging.getLogger("detectron2.mgd")


class MGDTrainer(DefaultTrainer):
    """DefaultTrainer for MGD and plain RetinaNet runs; see the module docstring."""

    def __init__(self, cfg):
        cfg = scale_to_world_size(cfg, comm.get_world_size())
        with ddp_built_by(build_ddp):
            super().__init__(cfg)
        self.amp_enabled = bool(cfg.SOLVER.AMP.ENABLED)
        self.device = torch.device(cfg.MODEL.DEVICE)
        # -- precision: the autocast dtype, and loss scaling for float16 (bfloat16 has float32's range)
        self.amp_dtype = amp_dtype(cfg.SOLVER.AMP.PRECISION, self.device)
        use_scaler = self.amp_enabled and self.amp_dtype == torch.float16
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        # upstream's checkpointables (whatever this Detectron2 saves: at the pin the optimizer
        # and scheduler; today the trainer, holding the iteration, optimizer and scheduler),
        # plus what continues the same training (mgd_resume); files read safely
        resume_state = dict(grad_scaler=ScalerCheckpointable(self.grad_scaler),
                            loss_normalizer=LossNormalizerCheckpointable(self, self._iteration_end),
                            event_history=EventHistoryCheckpointable(self, self._iteration_end))
        if self.data_stream is not None:
            resume_state["data_stream"] = DataStreamCheckpointable(self, self.data_stream)
        if self.matching_hook() is not None:
            resume_state["mgd_matching"] = MatchingCheckpointable(self, self.matching_hook())
        self.checkpointer = MGDCheckpointer(self.model, cfg.OUTPUT_DIR, **self.checkpointer.checkpointables,
                                            **resume_state)
        _log_scale_rules(cfg, self.model, comm.get_world_size(), self.amp_enabled, self.amp_dtype)
        for hook in self._hooks:  # the periodic checkpointer holds the old one
            if hasattr(hook, "checkpointer"):
                hook.checkpointer = self.checkpointer

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's training loader, resumable at any batch (``mgd_train_stream``)."""
        return build_train_stream(cfg)

    @property
    def data_stream(self):
        """The training stream (a ResumableStream), or None for upstream's loader."""
        loader = inner_trainer(self).data_loader
        return loader if isinstance(loader, ResumableStream) else None

    @property
    def data_seed(self) -> int:
        """The seed of the data stream and of every step's random draws (restored on resume)."""
        stream = self.data_stream
        return stream.seed if stream is not None else self._fallback_seed

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return coco_evaluator(dataset_name, cfg, output_folder)

    def run_step(self):
        """Upstream's step, or under ``SOLVER.AMP.ENABLED`` the same step with the forward
        autocast to :attr:`amp_dtype` (float16: with loss scaling), as Detectron2's later
        ``AMPTrainer``. The losses are summed in float32."""
        if not self.amp_enabled:
            return super().run_step()
        assert self.model.training, "[MGDTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(training_data_iter(self))
        data_time = time.perf_counter() - start
        with autocast(self.device, True, self.amp_dtype):  # precision: SOLVER.AMP.PRECISION
            loss_dict = self.model(data)
        losses = sum(loss.float() for loss in loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        write_metrics(self, loss_dict, data_time)  # raises on non-finite losses
        # unscales before the optimizer's step, so gradient clipping sees true gradients;
        # steps with inf/NaN gradients are skipped and the scale lowered
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def wrap_model_with_ddp(self, cfg, model):
        """The pin's DDP hook (PR #1820); today's Detectron2 goes through ``ddp_built_by``."""
        return build_ddp(model)

    def build_hooks(self):
        hooks = super().build_hooks()
        self._fallback_seed = None if self.data_stream is not None else data_seed(self.cfg)
        streams = [self.data_stream] if self.data_stream is not None else []
        if is_mgd_config(self.cfg):
            # ahead of the step timer, so that the matching pass is not timed as a step
            matching = MGDMatchingHook(self.cfg)
            if self.cfg.MGD.MATCHING_DATA == "separate":
                matching.stream = self._matching_stream()
                streams.append(matching.stream)
            hooks.insert(0, matching)
        # before everything else of a step: its random draws depend on the iteration only
        hooks.insert(0, StepSeedHook(lambda: self.data_seed))
        # right after the scheduler's step: an iteration's update ends there (mgd_interrupt);
        # what a checkpoint of it holds is recorded first, before any checkpoint is written
        self._iteration_end = IterationEndHook(streams, self.model)
        self.interrupt_guard = InterruptGuard()
        after_scheduler = next(i for i, h in enumerate(hooks) if isinstance(h, d2_hooks.LRScheduler)) + 1
        hooks[after_scheduler:after_scheduler] = [self._iteration_end, self.interrupt_guard]
        hooks.append(ParameterDigestHook())  # every rank logs its parameters' digest at the end
        if comm.is_main_process():
            hooks.append(ProgressHook())
        return hooks

    def _matching_stream(self) -> ResumableStream:
        """``MGD.MATCHING_DATA separate``: the matching passes' own stream, over the training data
        with a seed of its own (derived from the data seed), so the training stream's batches do
        not depend on the matchings."""
        if self.data_stream is None:
            raise ValueError(f"MGD.MATCHING_DATA separate needs a resumable training loader (DATALOADER."
                             f"SAMPLER_TRAIN {' or '.join(RESUMABLE_SAMPLERS)})")
        return self.data_stream.sibling(derive_seed(self.data_seed, MATCHING_STREAM))

    def train(self):
        """Upstream's ``train``; on Ctrl-C, first a checkpoint of the last finished iteration
        (main process; its name in ``interrupted_checkpoint``, None if none finished)."""
        self.interrupted_checkpoint = None
        try:
            return super().train()
        except KeyboardInterrupt:
            if comm.is_main_process():
                self.interrupted_checkpoint = self.interrupt_guard.save(self.checkpointer)
            raise

    def matching_hook(self):
        for hook in self._hooks:
            if isinstance(hook, MGDMatchingHook):
                return hook
        return None


def scale_to_world_size(cfg, world_size: int):
    """Upstream's ``SOLVER.REFERENCE_WORLD_SIZE`` auto-scaling, extended to MGD's schedule.

    When ``SOLVER.REFERENCE_WORLD_SIZE`` (upstream's key, 0 = off) differs from
    ``world_size``, upstream scales the batch and learning rate by
    ``scale = world_size / REFERENCE_WORLD_SIZE`` and the iteration counts inversely (the
    per-process batch stays). The matching schedule is counted in iterations too:
    ``MGD.UPDATE_FREQ`` and ``MGD.UPDATE_SLOW_STEP`` are scaled like ``SOLVER.STEPS``, so the
    matchings happen at the same point of training. ``MGD.UPDATE_ITER`` keeps each matching's
    statistic the reference's (``mgd.matching.plan_matching_pass``):

    * ``MGD.MATCHING_RANKS "all"`` solves from ``(UPDATE_ITER + 1) x IMS_PER_BATCH /
      MGD.REFERENCE_WORLD_SIZE`` images: ``UPDATE_ITER + 1`` is divided by ``scale`` (the
      batch was multiplied by it), e.g. COCO on 1 GPU with ``SOLVER.REFERENCE_WORLD_SIZE 8``:
      batch 2, ``UPDATE_ITER`` 8007, as many images as the reference, 2002 (1001 batches of 2;
      other images than the original's, which took rank 0's alone);
    * ``"rank0"`` solves from rank 0's ``UPDATE_ITER + 1`` batches: the per-process batch is
      unchanged, so ``UPDATE_ITER`` is too (1001 batches of 2 = 2002 images, as the original
      on its 8 GPUs).
    """
    scaled = DefaultTrainer.auto_scale_workers(cfg, world_size)
    if scaled is cfg or not is_mgd_config(cfg):
        return scaled
    scale = world_size / cfg.SOLVER.REFERENCE_WORLD_SIZE
    frozen = scaled.is_frozen()
    scaled.defrost()
    schedule = MatchingSchedule.from_config(cfg).scaled(scale)
    scaled.MGD.UPDATE_FREQ, scaled.MGD.UPDATE_SLOW_STEP = list(schedule.update_freq), list(schedule.slow_steps)
    scaled.MGD.UPDATE_ITER = scaled_update_iter(cfg.MGD.UPDATE_ITER, scale, cfg.MGD.MATCHING_RANKS)
    logger.info(
        f"Auto-scaling the MGD schedule to UPDATE_FREQ={list(scaled.MGD.UPDATE_FREQ)}, "
        f"UPDATE_SLOW_STEP={list(scaled.MGD.UPDATE_SLOW_STEP)}, UPDATE_ITER={scaled.MGD.UPDATE_ITER}."
    )
    if frozen:
        scaled.freeze()
    return scaled


def _log_scale_rules(cfg, model, world_size: int, amp_enabled: bool, dtype: torch.dtype) -> None:
    """One line each: the distillation divisor (the model's own), the matching pass and the
    precision of this run."""
    if is_mgd_config(cfg):
        batch, reference = cfg.SOLVER.IMS_PER_BATCH, cfg.MGD.REFERENCE_WORLD_SIZE
        divisor = unwrap_model(model).loss_divisor
        if reference:
            rule = (f"IMS_PER_BATCH {batch} x MGD.REFERENCE_WORLD_SIZE {reference} / {world_size} processes"
                    f" = {divisor:g}: the distillation-to-detection balance of a {reference}-process run")
        else:
            rule = (f"IMS_PER_BATCH {batch} (MGD.REFERENCE_WORLD_SIZE 0, the original code's rule: "
                    f"{8 / world_size:g}x the published 8-GPU run's strength on {world_size} processes)")
        logger.info(f"MGD: each process divides its summed distillation loss by {rule}")
        mgd = cfg.MGD
        plan = plan_matching_pass(mgd.UPDATE_ITER, batch, reference, world_size, mgd.MATCHING_RANKS)
        if plan.ranks == "all":
            rule = (f"(MGD.UPDATE_ITER {mgd.UPDATE_ITER} + 1) x IMS_PER_BATCH {batch} / reference "
                    f"{reference or world_size} processes = {plan.images} images, summed over all "
                    f"{world_size} processes (MGD.MATCHING_RANKS all)")
        else:
            rule = (f"rank 0's (MGD.UPDATE_ITER {mgd.UPDATE_ITER} + 1) x {plan.rank_batch} = {plan.images} "
                    f"images (MGD.MATCHING_RANKS rank0, the original's rule)")
        logger.info(f"MGD: each matching draws {plan.batches} batches per process and is solved from {rule}")
    if amp_enabled:
        name = str(dtype).replace("torch.", "") + (" with loss scaling" if dtype == torch.float16 else "")
        logger.info(f"Mixed precision (SOLVER.AMP.ENABLED, PRECISION {cfg.SOLVER.AMP.get('PRECISION', 'auto')}): "
                    f"forwards autocast to {name}; the distillation loss, margins and matching in float32")
