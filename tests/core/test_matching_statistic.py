"""Each matching is solved from the same images at any process count (MGD.MATCHING_RANKS "all").

Through the real ``MGDMatchingHook`` and ``MGDRetinaNet``: two gloo processes, each drawing
its half of every global batch (as Detectron2's sampler splits IMS_PER_BATCH over the ranks),
end with the assignment, mean matched costs and image count of one process drawing whole
batches of the same stream. IMS_PER_BATCH 4, UPDATE_ITER 9: (9 + 1) x 4 / 8 = 5 images, i.e.
two batches, the second used for one image only (rank 0's first).
"""
import os

import pytest

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from d2_support import TINY_INPUT, config_dir, import_overlay, load_cfg, synthetic_batch  # noqa: E402

BATCH = 4
OPTS = TINY_INPUT + ["SOLVER.IMS_PER_BATCH", str(BATCH), "MGD.UPDATE_ITER", "9", "MGD.IGNORE_INDS", "[2, 3, 4, 5, 6, 7, 8]",
                     "OUTPUT_DIR", ""]
STREAM = synthetic_batch(2 * BATCH, seed=21)  # the job's first two global batches, image by image


class _Trainer:
    """What MGDMatchingHook reads of a trainer: the model, the iteration, the training stream."""

    def __init__(self, model, batches):
        self.model, self.iter, self.start_iter = model, 0, 0
        self._data_loader_iter = iter(batches)


def _matching(cfg_root, rank, world_size):
    """Run the hook's pass on this rank's slices of the stream; its record and the model."""
    import_overlay()
    from detectron2.engine.mgd_hooks import MGDMatchingHook
    from detectron2.modeling import build_model

    cfg = load_cfg(cfg_root, "demo_mgd_R50_R18.yaml", OPTS)
    torch.manual_seed(0)
    model = build_model(cfg)
    per_rank = BATCH // world_size
    batches = [STREAM[b * BATCH + rank * per_rank: b * BATCH + (rank + 1) * per_rank] for b in range(2)]
    hook = MGDMatchingHook(cfg)
    hook.trainer = _Trainer(model, batches)
    hook.update_matching()
    return hook.history[-1], model


def _rank_main(rank, world_size, init_file, out_dir, cfg_root):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        record, model = _matching(cfg_root, rank, world_size)
        torch.save({"record": record, "assignments": model.distiller.assignments()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_solve_the_matching_of_one_process_over_the_same_images(tmp_path):
    cfg_root = tmp_path / "cfg"
    config_dir(cfg_root)  # once, before the ranks read it
    mp.spawn(_rank_main, args=(2, str(tmp_path / "rendezvous"), str(tmp_path), str(cfg_root)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    record, model = _matching(cfg_root, 0, 1)
    assert (record["images"], record["images_per_rank"], record["ranks"]) == (5, [5], "all")
    expected = model.distiller.assignments()
    assert set(expected) == {"c2", "c3"}
    for got in ranks:
        assert (got["record"]["images"], got["record"]["images_per_rank"]) == (5, [3, 2])
        assert got["record"]["assignment_digest"] == record["assignment_digest"]
        for name, assignment in expected.items():
            assert torch.equal(got["assignments"][name], assignment), name
        assert got["record"]["costs"] == pytest.approx(record["costs"], rel=1e-5)
