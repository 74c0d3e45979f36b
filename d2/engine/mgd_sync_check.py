"""Check that every process ends training with the same parameters (multi-GPU, multi-node).

DDP keeps the replicas equal by averaging gradients; a rank that drifts (a rank that skipped
a step, a non-deterministic op, mismatched code on another machine) trains silently wrong,
and only rank 0's weights are saved. After the last iteration ``ParameterDigestHook`` logs, on
every rank, a digest of the model's trainable parameters (``log.txt.rank<N>`` holds the other
ranks' lines), and rank 0 logs an error naming the ranks whose digest differs from its own.
"""
import hashlib
import logging

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm

__all__ = ["ParameterDigestHook", "parameter_digest"]

logger = logging.getLogger("detectron2.mgd")


def parameter_digest(model: torch.nn.Module) -> str:
    """16 hex digits of SHA-256 over the names, shapes, dtypes and bytes of the parameters
    with ``requires_grad`` (DDP's wrapper removed), in name order."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    h = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if not param.requires_grad:
            continue
        data = param.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(data.shape)}:{data.dtype};".encode())
        h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class ParameterDigestHook(HookBase):
    """Logs the trainable-parameter digest of every rank after the last iteration and
    compares them on rank 0 (an error line names the ranks that differ)."""

    def after_step(self):
        if self.trainer.iter != self.trainer.max_iter - 1:
            return
        digest = parameter_digest(self.trainer.model)
        rank = comm.get_rank()
        logger.info(f"trainable parameter digest {digest} (rank {rank}) after iteration {self.trainer.iter}")
        if comm.get_world_size() == 1:
            return
        digests = comm.all_gather(digest)
        if comm.is_main_process():
            differ = [r for r, d in enumerate(digests) if d != digest]
            if differ:
                logger.error(
                    f"ranks {differ} end training with other parameters than rank 0 "
                    f"({', '.join(digests)}): the processes did not train in step"
                )
            else:
                logger.info(f"all {len(digests)} ranks hold the same trainable parameters")
