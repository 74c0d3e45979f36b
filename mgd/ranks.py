"""The matching statistic across processes: which ranks' costs a matching is solved from, and
how the solved assignment reaches every rank (:meth:`mgd.distiller.MGDDistiller.finish_matching`)."""
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["MatchingStatistic", "combine_ranks", "broadcast_from_rank0"]


@dataclass(frozen=True)
class MatchingStatistic:
    """What the last ``finish_matching`` solved from.

    Attributes:
        ranks: "all" (every rank's costs summed) or "rank0" (rank 0's alone, the original's rule).
        images_per_rank: images each rank accumulated, by rank (one entry without torch.distributed).
        images: images the solved mean cost is over (the sum over the ranks used).
    """

    ranks: str
    images_per_rank: Tuple[int, ...]
    images: int

    @property
    def contributing_ranks(self) -> Tuple[int, ...]:
        """The ranks whose images entered the solved cost."""
        used = range(len(self.images_per_rank)) if self.ranks == "all" else range(1)
        return tuple(r for r in used if self.images_per_rank[r] > 0)

    def describe(self) -> str:
        """One line, e.g. "2002 images from ranks 0-7 of 8 (ranks 'all'; images per rank [252, 250, ..., 250])"."""
        ranks = self.contributing_ranks
        if not ranks:
            who = "no rank"
        elif len(ranks) == 1:
            who = f"rank {ranks[0]}"
        elif list(ranks) == list(range(ranks[0], ranks[-1] + 1)):
            who = f"ranks {ranks[0]}-{ranks[-1]}"
        else:
            who = "ranks " + ",".join(map(str, ranks))
        counts = "" if len(self.images_per_rank) == 1 else f"; images per rank {list(self.images_per_rank)}"
        return f"{self.images} images from {who} of {len(self.images_per_rank)} (ranks {self.ranks!r}{counts})"


def combine_ranks(summed: Dict[int, Tensor], images: int, ranks: str) -> Tuple[Dict[int, Tensor], List[int]]:
    """The costs every rank solves from, and each rank's image count (gathered).

    "all": the costs summed over the ranks (one all-reduce); "rank0": rank 0's (one broadcast).
    """
    order = sorted(summed)
    flat = torch.cat([summed[i].reshape(-1) for i in order])
    if ranks == "all":
        dist.all_reduce(flat)
    else:
        dist.broadcast(flat, src=0)
    counts = [torch.zeros(1, dtype=torch.long, device=flat.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([images], dtype=torch.long, device=flat.device))
    sizes = [summed[i].numel() for i in order]
    combined = {i: part.view_as(summed[i]) for i, part in zip(order, flat.split(sizes))}
    return combined, [int(c.item()) for c in counts]


def broadcast_from_rank0(assignments: Dict[int, Tensor]) -> Dict[int, Tensor]:
    """One dist.broadcast of all assignments (concatenated) from rank 0; same dict on return."""
    order = sorted(assignments)
    flat = torch.cat([assignments[i] for i in order])
    dist.broadcast(flat, src=0)
    sizes = [assignments[i].numel() for i in order]
    return dict(zip(order, flat.split(sizes)))
