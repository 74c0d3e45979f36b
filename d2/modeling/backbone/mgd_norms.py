"""The synchronised BatchNorm of ``MGD.SYNC_BN``: the original's, Detectron2's NaiveSyncBatchNorm.

The original MGD built its SyncBN with ``get_norm("SyncBN", C)`` on PyTorch <= 1.5, where
Detectron2 maps that name to its ``NaiveSyncBatchNorm``: each rank computes the mean and the
mean square of its own batch per channel, and the ranks' values are averaged **with equal
weight** (``stats_mode=""``). Later Detectron2 maps "SyncBN" to ``nn.SyncBatchNorm``, which
weights each rank by its element count (N·H·W); the two differ whenever the ranks' padded
image sizes differ. ``sync_batch_norm(C)`` builds the original's, for the distiller's student
norms and (``STAGE_LAST_NORM "naiveSyncBN"``) the student's stage-last norms.

One change, the one later Detectron2 made to the same class: a float16 input (float16
autocast) has its statistics computed in float32 and the output cast back. At the pin the
mean square is computed in float16, where ``x * x`` overflows for ``|x| > 256`` and
``E[x²] - E[x]²`` cancels catastrophically. Float32 and bfloat16 inputs are untouched.
"""
import torch
from torch import nn

from detectron2.layers.batch_norm import NaiveSyncBatchNorm

__all__ = ["MGDNaiveSyncBatchNorm", "sync_batch_norm", "STAGE_LAST_NORMS"]


class MGDNaiveSyncBatchNorm(NaiveSyncBatchNorm):
    """Detectron2's NaiveSyncBatchNorm (equal weight per rank), float16 statistics in float32."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dtype == torch.float16:
            with torch.autocast(device_type=input.device.type, enabled=False):
                return super().forward(input.float()).half()
        return super().forward(input)


def sync_batch_norm(channels: int) -> nn.Module:
    """The original's synchronised BN over ``channels`` (``MGD.SYNC_BN``)."""
    return MGDNaiveSyncBatchNorm(channels)


#: STAGE_LAST_NORM names resolved here before Detectron2's get_norm sees them
STAGE_LAST_NORMS = {"naiveSyncBN": sync_batch_norm}
