"""plan_matching_pass: how many batches a matching draws and which images it solves from.

The reference (the original, COCO): 8 GPUs x 2 images, UPDATE_ITER 1000, its loop ran
UPDATE_ITER + 1 = 1001 batches per GPU and solved from rank 0's: 1001 x 2 = 2002 images.
"""
import pytest

from mgd.matching import plan_matching_pass


def taken_images(plan):
    """Global indices of the images that enter the costs, numbering the training stream as the
    job sees it: batch after batch, rank after rank inside a batch (each rank's slice of the
    global batch), image after image inside a rank's batch."""
    out = []
    for batch in range(plan.batches):
        for rank in range(plan.world_size):
            first = (batch * plan.world_size + rank) * plan.rank_batch
            out += range(first, first + plan.images_taken(rank, batch))
    return out


@pytest.mark.parametrize("world_size", [1, 2, 4, 8, 16])
def test_all_ranks_solve_from_the_references_images_at_any_process_count(world_size):
    plan = plan_matching_pass(1000, 16, 8, world_size, "all")
    assert (plan.images, plan.batches, plan.rank_batch) == (2002, 126, 16 // world_size)
    assert taken_images(plan) == list(range(2002))  # the stream's first 2002 images, each once


def test_rank0_rule_is_the_originals():
    reference = plan_matching_pass(1000, 16, 8, 8, "rank0")
    assert (reference.batches, reference.images) == (1001, 2002)
    assert [reference.images_taken(r, 0) for r in range(8)] == [2] + [0] * 7
    one_gpu = plan_matching_pass(1000, 16, 8, 1, "rank0")  # what the same rule means on 1 GPU
    assert (one_gpu.batches, one_gpu.images) == (1001, 16016)


def test_the_reference_world_size_sets_the_image_count():
    assert plan_matching_pass(1000, 16, 4, 1).images == 4004  # a 4-GPU reference: 1001 x 4
    assert plan_matching_pass(1000, 16, 16, 2).images == 1001  # a 16-GPU reference: 1001 x 1
    # 0 (the original code's rules): this run is its own reference, its rank 0's count
    for world_size in (1, 2, 8):
        assert plan_matching_pass(1000, 16, 0, world_size).images == 1001 * 16 // world_size


def test_rounding_small_passes():
    plan = plan_matching_pass(2, 2, 8, 1)  # (2 + 1) x 2 / 8 = 0.75: rounded up to one image
    assert (plan.images, plan.batches, plan.images_taken(0, 0)) == (1, 1, 1)
    plan = plan_matching_pass(79, 4, 8, 1)  # the demo: 40 images, 10 batches of 4
    assert (plan.images, plan.batches) == (40, 10)
    plan = plan_matching_pass(9, 16, 8, 2)  # 20 images: one batch of 16, then 4 of the second
    assert (plan.batches, [plan.images_taken(r, 1) for r in (0, 1)]) == (2, [4, 0])
    assert taken_images(plan) == list(range(20))


def test_refusals():
    with pytest.raises(ValueError, match="MATCHING_RANKS"):
        plan_matching_pass(10, 16, 8, 1, "rank1")
    with pytest.raises(ValueError, match="divisible"):
        plan_matching_pass(10, 16, 8, 3)
    with pytest.raises(ValueError, match="outside"):
        plan_matching_pass(10, 16, 8, 2).images_taken(2, 0)
