"""Random Detectron2 training inputs, for the benchmarks and the tests (no dataset on disk)."""
import torch

__all__ = ["synthetic_batch"]


def synthetic_batch(n: int = 2, size: int = 64, seed: int = 0, num_classes: int = 4) -> list:
    """Detectron2 training inputs: random images with 1-3 random boxes each."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        wh = 6 + torch.rand(k, 2, generator=g) * size * 0.35
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (k,), generator=g)
        image = torch.rand(3, size, size, generator=g) * 255
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch
