"""Two CPU processes (gloo): every rank ends finish_matching with rank 0's assignment."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mgd

STUDENT = (32, 64, 32, 32, 32, 32, 32, 32, 32)
TEACHER = (128, 96, 32, 32, 32, 32, 32, 32, 32)
IGNORE = (2, 3, 4, 5, 6, 7, 8)


def rank_data(rank: int):
    """Different data per rank, reproducible in the parent."""
    g = torch.Generator().manual_seed(1000 + rank)
    student = [torch.randn(2, STUDENT[i], 4, 4, generator=g) if i not in IGNORE else None for i in range(9)]
    teacher = [torch.randn(2, TEACHER[i], 4, 4, generator=g) if i not in IGNORE else None for i in range(9)]
    return student, teacher


def run_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        d = mgd.MGDDistiller(STUDENT, TEACHER, ignore_inds=IGNORE)
        d.update_margins([None] * 9)
        d.accumulate_matching(*rank_data(rank))
        d.finish_matching()
        torch.save(d.assignments(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def single_process_assignment(rank: int):
    d = mgd.MGDDistiller(STUDENT, TEACHER, ignore_inds=IGNORE)
    d.accumulate_matching(*rank_data(rank))
    d.finish_matching()
    return d.assignments()


def test_all_ranks_end_with_rank0_assignment(tmp_path):
    mp.spawn(run_rank, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    expected, rank1_alone = single_process_assignment(0), single_process_assignment(1)
    for name in ("c2", "c3"):
        assert not torch.equal(rank1_alone[name], expected[name])  # the ranks' data disagree
        assert torch.equal(got[0][name], expected[name])
        assert torch.equal(got[1][name], expected[name])
