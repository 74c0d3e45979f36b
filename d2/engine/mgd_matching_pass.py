"""One matching pass, the only place that runs one: reset -> accumulate per batch -> finish.

Used by the training's ``MGDMatchingHook`` (the pass plan of ``mgd.matching.plan_matching_pass``
over the training data), the loss-factor probe (``mgd_probe``) and
``scripts/measure_matched_cost.py`` (every image of a test set). Both networks run in eval
mode without grad; the train/eval mode is restored after the pass (also when it fails). While
the pass runs, a line with its ETA is logged whenever the ``detectron2`` log has been silent
for ~30 s (``mgd_progress.PROGRESS``).
"""
import logging
import time
from typing import Callable, Dict, Iterator, List, Optional

import torch

from detectron2.engine.mgd_progress import PROGRESS, format_seconds

__all__ = ["run_matching_pass"]

logger = logging.getLogger("detectron2.mgd")


def run_matching_pass(model, data: Iterator[List[dict]], batches: int, *,
                      images_taken: Optional[Callable[[int], int]] = None,
                      label: str = "MGD matching", mode_of=None) -> Dict[str, float]:
    """A fresh matching of ``model`` from ``batches`` batches drawn from ``data``.

    Args:
        model: an ``MGDRetinaNet`` (``reset_matching``, ``accumulate_matching``, ``finish_matching``).
        data: an iterator of batches (lists of Detectron2 input dicts); exactly ``batches`` are
            drawn, whatever ``images_taken`` says (so every process draws the same number).
        batches: how many batches the pass draws.
        images_taken: ``i -> n``: the first ``n`` images of batch ``i`` (0-based) enter the
            costs (0: none); None = every image of every batch.
        label: how the progress lines name the pass (``"<label>: 3/20 batches, ..."``).
        mode_of: the module whose train/eval mode is switched (a DistributedDataParallel
            wrapper of ``model``); default ``model``.
    Returns:
        ``finish_matching()``'s mean matched cost per distilled position.
    """
    mode_of = model if mode_of is None else mode_of
    was_training = mode_of.training
    mode_of.eval()
    start = time.perf_counter()
    try:
        model.reset_matching()
        with torch.no_grad():
            for done in range(1, batches + 1):
                batch = next(data)
                taken = len(batch) if images_taken is None else images_taken(done - 1)
                if taken:
                    model.accumulate_matching(batch[:taken])
                if done < batches and PROGRESS.due():  # the caller logs the end
                    elapsed = time.perf_counter() - start
                    eta = elapsed / done * (batches - done)
                    logger.info(f"{label}: {done}/{batches} batches, {format_seconds(elapsed)} elapsed, "
                                f"ETA {format_seconds(eta)}")
                    PROGRESS.mark()
        return model.finish_matching()
    finally:
        mode_of.train(was_training)
