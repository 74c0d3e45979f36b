"""Trainer for MGD (and plain RetinaNet) runs, on GPUs (NCCL) or CPU processes (gloo).

``MGDTrainer`` is upstream's DefaultTrainer with:

* COCO evaluation (``COCOEvaluator``) for every ``DATASETS.TEST`` entry;
* DDP built with ``find_unused_parameters=True`` and ``broadcast_buffers=False``, and
  without ``device_ids`` on CPU (gloo), so multi-process CPU runs work;
* the MGD matching hook (``mgd_hooks.MGDMatchingHook``) when the model is MGDRetinaNet;
* ``MGDCheckpointer``: checkpoints are read as data (restricted unpickling of ``.pkl``,
  ``torch.load(weights_only=True)`` for ``.pth``; ``scripts/checkpoint_io.py``), with
  one-line errors for bad files, and optionally a key prefix stripped (evaluating
  ``s_net.``/``t_net.`` out of a distillation checkpoint).
"""
import logging
import os

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine.defaults import DefaultTrainer
from detectron2.engine.mgd_hooks import MGDMatchingHook
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from mgd.config import is_mgd_config

try:  # the project's safe checkpoint reader (needs the repository root on sys.path)
    from scripts.checkpoint_io import CheckpointError, load_checkpoint_object
except ImportError as error:  # never fall back to unrestricted unpickling
    raise ImportError(
        "MGD's checkpoint reader (scripts/checkpoint_io.py) is not importable: put the MGD "
        "repository root on PYTHONPATH (train_net.py and `make` do)"
    ) from error

__all__ = ["MGDTrainer", "MGDCheckpointer", "strip_prefix"]

logger = logging.getLogger("detectron2.mgd")


def strip_prefix(state: dict, prefix: str) -> dict:
    """Keep the keys starting with ``prefix``, without it; unchanged if none does."""
    if not prefix or not any(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class MGDCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads checkpoints as data and can strip a key prefix."""

    def __init__(self, model, save_dir="", *, strip_prefix: str = "", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strip_prefix = strip_prefix

    def load(self, path, checkpointables=None):
        if path and "://" not in path and not os.path.isfile(path):  # fvcore would assert
            raise CheckpointError(f"MODEL.WEIGHTS {path!r} does not exist; check the path "
                                  "(make weights / make merge write the usual inputs)")
        return super().load(path, checkpointables)

    def _load_file(self, filename):
        data = load_checkpoint_object(filename, "MODEL.WEIGHTS" if filename.endswith(".pkl") else "checkpoint")
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint {filename!r} holds a {type(data).__name__}, not a dict")
        if filename.endswith(".pkl"):
            if "model" in data and "__author__" in data:
                self.logger.info(f"Reading a file from '{data['__author__']}'")
            else:  # Caffe2 / Detectron1 model zoo layout, as upstream
                blobs = data.get("blobs", data)
                blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
                data = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        elif "model" not in data:
            data = {"model": data}
        if self.strip_prefix:
            before = len(data["model"])
            data["model"] = strip_prefix(data["model"], self.strip_prefix)
            if len(data["model"]) != before:
                self.logger.info(f"Using the {len(data['model'])} '{self.strip_prefix}*' tensors of {filename}")
        return data


class MGDTrainer(DefaultTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        # same checkpointables as upstream, read safely
        self.checkpointer = MGDCheckpointer(
            self.model, cfg.OUTPUT_DIR, optimizer=self.optimizer, scheduler=self.scheduler
        )
        for hook in self._hooks:  # the periodic checkpointer holds the old one
            if hasattr(hook, "checkpointer"):
                hook.checkpointer = self.checkpointer

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, cfg, True, output_folder)

    def wrap_model_with_ddp(self, cfg, model):
        if comm.get_world_size() == 1:
            return model
        on_cuda = next(model.parameters()).device.type == "cuda"
        return DistributedDataParallel(
            model,
            device_ids=[comm.get_local_rank()] if on_cuda else None,
            broadcast_buffers=False,
            find_unused_parameters=True,
        )

    def build_hooks(self):
        hooks = super().build_hooks()
        if is_mgd_config(self.cfg):
            # first, so that the matching pass runs before the step timer starts
            hooks.insert(0, MGDMatchingHook(self.cfg))
        return hooks

    def matching_hook(self):
        for hook in self._hooks:
            if isinstance(hook, MGDMatchingHook):
                return hook
        return None
