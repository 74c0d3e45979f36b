"""Two CPU processes (gloo): whose costs finish_matching solves from, and that every rank ends
with the same assignment.

* ``ranks="all"``: each rank accumulates its own images; the assignment (and the mean matched
  costs, and the image count) equal one process's over all those images;
* ``ranks="rank0"`` (the original's rule): rank 0's images alone, rank 1's ignored;
* a rank that accumulated nothing (the end of a pass) still takes part.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mgd

STUDENT = (32, 64, 32, 32, 32, 32, 32, 32, 32)
TEACHER = (128, 96, 32, 32, 32, 32, 32, 32, 32)
IGNORE = (2, 3, 4, 5, 6, 7, 8)
IMAGES = {0: (3, 2), 1: (1, 4)}  # per rank: the images of its two batches


def rank_batches(rank: int):
    """Different data per rank, reproducible in the parent: [(student, teacher)] per batch."""
    g = torch.Generator().manual_seed(1000 + rank)
    out = []
    for n in IMAGES[rank]:
        student = [torch.randn(n, STUDENT[i], 4, 4, generator=g) if i not in IGNORE else None for i in range(9)]
        teacher = [torch.randn(n, TEACHER[i], 4, 4, generator=g) if i not in IGNORE else None for i in range(9)]
        out.append((student, teacher))
    return out


#: (ranks, the rank that accumulates nothing or -1) of each scenario, run in one process group
SCENARIOS = {"all": ("all", -1), "rank0": ("rank0", -1), "empty": ("all", 1)}


def run_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for scenario, (ranks, empty_rank) in SCENARIOS.items():
            d = mgd.MGDDistiller(STUDENT, TEACHER, ignore_inds=IGNORE)
            d.update_margins([None] * 9)
            if rank != empty_rank:
                for s, t in rank_batches(rank):
                    d.accumulate_matching(s, t)
            costs = d.finish_matching(ranks)
            torch.save({"assignments": d.assignments(), "costs": costs, "statistic": d.last_statistic},
                       os.path.join(out_dir, f"{scenario}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def single_process(batches):
    d = mgd.MGDDistiller(STUDENT, TEACHER, ignore_inds=IGNORE)
    for s, t in batches:
        d.accumulate_matching(s, t)
    costs = d.finish_matching()
    return d.assignments(), costs


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Spawn the two processes once; {scenario: [rank 0's result, rank 1's]}."""
    out = tmp_path_factory.mktemp("distiller_distributed")
    mp.spawn(run_rank, args=(2, str(out / "rendezvous"), str(out)), nprocs=2, join=True)
    return {name: [torch.load(out / f"{name}-rank{r}.pt", weights_only=False) for r in range(2)]
            for name in SCENARIOS}


def _assert_both_ranks_hold(got, assignments, costs):
    for rank in got:
        for name in ("c2", "c3"):
            assert torch.equal(rank["assignments"][name], assignments[name]), name
        assert rank["costs"] == pytest.approx(costs, rel=1e-6)


def test_all_ranks_solve_from_every_ranks_images(two_ranks):
    got = two_ranks["all"]
    everything = rank_batches(0) + rank_batches(1)
    assignments, costs = single_process(everything)
    rank0_alone, _ = single_process(rank_batches(0))
    assert any(not torch.equal(rank0_alone[n], assignments[n]) for n in ("c2", "c3"))  # rank 1's images matter
    _assert_both_ranks_hold(got, assignments, costs)
    for rank in got:
        statistic = rank["statistic"]
        assert (statistic.ranks, statistic.images_per_rank, statistic.images) == ("all", (5, 5), 10)
        assert statistic.contributing_ranks == (0, 1)
        assert statistic.describe().startswith("10 images from ranks 0-1 of 2")


def test_rank0_rule_ignores_the_other_ranks_images(two_ranks):
    got = two_ranks["rank0"]
    assignments, costs = single_process(rank_batches(0))
    everything, _ = single_process(rank_batches(0) + rank_batches(1))
    assert any(not torch.equal(everything[n], assignments[n]) for n in ("c2", "c3"))
    _assert_both_ranks_hold(got, assignments, costs)
    for rank in got:
        assert (rank["statistic"].images_per_rank, rank["statistic"].images) == ((5, 5), 5)
        assert rank["statistic"].contributing_ranks == (0,)


def test_a_rank_without_images_takes_part(two_ranks):
    got = two_ranks["empty"]
    assignments, costs = single_process(rank_batches(0))
    _assert_both_ranks_hold(got, assignments, costs)
    assert [r["statistic"].images_per_rank for r in got] == [(5, 0)] * 2
    assert got[0]["statistic"].contributing_ranks == (0,)
