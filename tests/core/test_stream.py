"""mgd.stream: a training stream whose batch b is a pure function of (seed, rank, b), resumable
at any batch without reading the batches before it."""
import itertools
import random

import numpy as np
import pytest
import torch

from mgd.stream import ResumableStream, StreamLayoutError, orientation_of, plan_batches


def shuffled_passes(size, seed, rank=0, world_size=1):
    """One shuffled pass over range(size) after another, this rank's share (as Detectron2's
    TrainingSampler)."""
    def passes():
        g = torch.Generator()
        g.manual_seed(seed)
        while True:
            yield from torch.randperm(size, generator=g).tolist()
    return itertools.islice(passes(), rank, None, world_size)


def grouped_reference(indices, groups, batch_size):
    """Batches by group, written another way: the group's members in arrival order cut into
    runs of batch_size; a batch is complete when its last member arrives."""
    members = {}
    complete = []
    for number, index in enumerate(indices):
        group = members.setdefault(groups[index], [])
        group.append((number, index))
        if len(group) % batch_size == 0:
            complete.append((number, group[-batch_size:]))
    return [batch for _, batch in sorted(complete)]


def test_plain_batches_are_consecutive_runs():
    batches = list(itertools.islice(plan_batches(iter(range(100)), 4), 5))
    assert batches == [[(n, n) for n in range(4 * b, 4 * b + 4)] for b in range(5)]


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_grouped_batches_match_the_reference(batch_size):
    rng = random.Random(0)
    groups = [rng.randint(0, 1) for _ in range(37)]
    indices = list(itertools.islice(shuffled_passes(37, seed=3), 200))
    planned = list(plan_batches(iter(indices), batch_size, groups))
    assert planned == grouped_reference(indices, groups, batch_size)
    assert all(len({groups[i] for _, i in batch}) == 1 for batch in planned)


def test_orientation_is_detectron2s_two_groups():
    assert orientation_of(640, 480) == 0 and orientation_of(480, 640) == 1 and orientation_of(500, 500) == 1


class RecordingMapper:
    """Maps a dataset entry to what the generators give it: one draw of each (NumPy, random,
    torch); records the entries it was called for (in this process)."""

    def __init__(self):
        self.calls = []

    def __call__(self, entry):
        self.calls.append(entry["id"])
        return {"id": entry["id"], "draws": (np.random.rand(), random.random(), torch.rand(1).item())}


DATASET = [{"id": i, "width": 64 if i % 3 else 48, "height": 48 if i % 3 else 64} for i in range(23)]
ORIENTATION = [orientation_of(d["width"], d["height"]) for d in DATASET]


def make_stream(mapper=None, workers=0, seed=5, rank=0, world_size=1, grouped=True, batch_size=2):
    return ResumableStream(DATASET, mapper or RecordingMapper(), lambda s: shuffled_passes(len(DATASET), s, rank,
                                                                                           world_size),
                           batch_size, seed=seed, rank=rank, world_size=world_size,
                           orientation=ORIENTATION if grouped else None, num_workers=workers)


def take(stream, n):
    return [next(stream) for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_resumed_at_batch_k_continues_as_the_uninterrupted_one(workers):
    straight = take(make_stream(), 12)
    first = make_stream(workers=workers)
    take(first, 5)
    saved = first.state_dict()
    assert saved == {"seed": 5, "batches": 5, "batch_size": 2, "world_size": 1, "grouped": True}
    resumed = make_stream(workers=workers, seed=999)  # the saved seed wins
    resumed.load_state_dict(saved)
    assert take(resumed, 7) == straight[5:]


def test_the_batches_do_not_depend_on_the_number_of_loading_processes():
    assert take(make_stream(workers=0), 6) == take(make_stream(workers=1), 6) == take(make_stream(workers=2), 6)


def test_the_skipped_batches_are_never_mapped():
    straight_mapper, resumed_mapper = RecordingMapper(), RecordingMapper()
    straight = take(make_stream(straight_mapper), 9)
    resumed = make_stream(resumed_mapper)
    resumed.load_state_dict({"seed": 5, "batches": 6, "batch_size": 2, "world_size": 1, "grouped": True})
    assert take(resumed, 3) == straight[6:]
    assert resumed_mapper.calls == [d["id"] for batch in straight[6:] for d in batch]


def test_samples_get_their_own_draws_and_the_callers_generators_are_untouched():
    np.random.seed(1)
    expected = np.random.rand(3)
    np.random.seed(1)
    batches = take(make_stream(), 4)
    assert np.array_equal(np.random.rand(3), expected)
    draws = [d["draws"] for batch in batches for d in batch]
    assert len(set(draws)) == len(draws)  # no two samples drew alike


def test_ranks_share_the_seed_and_read_disjoint_shares():
    ranks = [take(make_stream(rank=r, world_size=2, grouped=False), 5) for r in range(2)]
    ids = [[d["id"] for batch in stream for d in batch] for stream in ranks]
    whole = list(itertools.islice(shuffled_passes(len(DATASET), 5), 20))
    assert ids[0] == whole[0::2] and ids[1] == whole[1::2]


def test_a_mapper_that_returns_none_gets_a_replacement_the_same_every_time():
    def refuse_seven(entry):
        return None if entry["id"] == 7 else {"id": entry["id"]}
    one, two = (take(make_stream(refuse_seven, grouped=False, batch_size=23), 2) for _ in range(2))
    assert one == two and all(d["id"] != 7 for batch in one for d in batch)


def test_position_after_an_iteration_is_what_it_had_delivered():
    stream = make_stream()
    assert stream.position_after(3) == 0  # nothing marked: where it started
    take(stream, 2)
    stream.mark(0)
    take(stream, 3)  # e.g. a matching pass and a step
    stream.mark(1)
    take(stream, 1)  # the unfinished iteration 2 drew a batch
    assert stream.position_after(1) == 5 and stream.position_after(0) == 2 and stream.delivered == 6
    assert stream.state_dict(1)["batches"] == 5


def test_a_position_of_another_layout_or_after_the_start_is_refused():
    stream = make_stream()
    with pytest.raises(StreamLayoutError, match="2 processes x 2 images, grouped by orientation"):
        stream.load_state_dict({"seed": 5, "batches": 3, "batch_size": 2, "world_size": 2, "grouped": True})
    take(stream, 1)
    with pytest.raises(RuntimeError, match="before its first batch"):
        stream.load_state_dict(stream.state_dict())
