"""A training data stream that continues where it stopped.

:class:`ResumableStream` yields one process's training batches (lists of mapped samples), as
Detectron2's training loader does: an endless stream of dataset indices (this process's share
of one shuffled pass after another), grouped into batches of images of one orientation when
asked (Detectron2's ``AspectRatioGroupedDataset``: landscape vs. not), each sample mapped
(read, augmented) by ``mapper`` in ``num_workers`` loading processes. Unlike it, batch ``b`` is
a pure function of (seed, rank, world size, ``b``):

* the batches are planned on the indices alone (:func:`plan_batches`; the orientation comes
  from the dataset's widths and heights), before any image is read;
* each sample is mapped with the random generators seeded from (seed, rank, its number in the
  stream) (:func:`mgd.seeding.seeded_rngs`), so its augmentation does not depend on which
  worker maps it, on how many there are, or on what ran before;
* the stream counts the batches it has delivered; its ``state_dict`` holds that count and the
  seed, and ``load_state_dict`` before the first batch makes it start there: the batches
  before are planned again (indices only), never read.
"""
import itertools
import logging
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .seeding import SAMPLE, derive_seed, seeded_rngs

__all__ = ["ResumableStream", "plan_batches", "orientation_of", "StreamLayoutError"]

logger = logging.getLogger(__name__)

#: (sample number in this process's stream, dataset index)
Key = Tuple[int, int]
#: how many other samples a mapper that returns None is given before it is an error
MAX_FALLBACKS = 10


class StreamLayoutError(ValueError):
    """A saved stream position that means something else in this stream (another batch size,
    process count or grouping)."""


def orientation_of(width: float, height: float) -> int:
    """The aspect-ratio group of an image, as Detectron2's: 0 landscape (w > h), 1 otherwise."""
    return 0 if width > height else 1


def plan_batches(indices: Iterator[int], batch_size: int,
                 orientation: Optional[Sequence[int]] = None) -> Iterator[List[Key]]:
    """Batches of ``(sample number, index)`` from an index stream.

    Without ``orientation``: consecutive runs of ``batch_size`` indices. With it (one group id
    per dataset index): each index waits in its group's bucket, and a bucket is emitted as a
    batch when it holds ``batch_size`` (Detectron2's ``AspectRatioGroupedDataset``); a sample's
    number is its position in ``indices``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    buckets: Dict[int, List[Key]] = {}
    for number, index in enumerate(indices):
        index = int(index)
        bucket = buckets.setdefault(0 if orientation is None else orientation[index], [])
        bucket.append((number, index))
        if len(bucket) == batch_size:
            yield bucket[:]
            bucket.clear()


class _SeededMapping(Dataset):
    """``dataset[index]`` through ``mapper`` with the generators seeded per sample number.

    A mapper that returns None (Detectron2's convention for "this sample cannot be used") is
    given another index, drawn from the same seeded position, up to :data:`MAX_FALLBACKS` times.
    """

    def __init__(self, dataset: Sequence, mapper: Callable[[Any], Any], seed: int, rank: int):
        self.dataset, self.mapper, self.seed, self.rank = dataset, mapper, seed, rank

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key) -> Any:
        number, index = key
        sample_seed = derive_seed(self.seed, self.rank, number, SAMPLE)
        draw = random.Random(sample_seed)
        for attempt in range(MAX_FALLBACKS + 1):
            with seeded_rngs(derive_seed(sample_seed, attempt)):
                mapped = self.mapper(self.dataset[index])
            if mapped is not None:
                return mapped
            replacement = draw.randrange(len(self.dataset))
            logger.warning(f"training sample {index} could not be mapped; using sample {replacement} instead")
            index = replacement
        raise RuntimeError(f"the data mapper returned None for {MAX_FALLBACKS + 1} samples in a row")


def _as_list(batch: List[Any]) -> List[Any]:
    return batch


class _Plan:
    """The batch sampler of the loading processes: the keys of batches ``start``, ``start + 1``, ..."""

    def __init__(self, index_stream: Callable[[int], Iterator[int]], seed: int, batch_size: int,
                 orientation: Optional[Sequence[int]], start: int):
        self.index_stream, self.seed, self.batch_size = index_stream, seed, batch_size
        self.orientation, self.start = orientation, start

    def __iter__(self) -> Iterator[List[Key]]:
        batches = plan_batches(self.index_stream(self.seed), self.batch_size, self.orientation)
        return itertools.islice(batches, self.start, None)


class ResumableStream:
    """One process's endless stream of training batches, resumable at any batch.

    Args:
        dataset: the dataset dicts (any indexable; e.g. Detectron2's ``DatasetFromList``).
        mapper: dataset dict -> model input (e.g. Detectron2's ``DatasetMapper``); its random
            draws (NumPy, ``random``, torch) are seeded per sample.
        index_stream: ``seed -> endless iterator`` of this process's dataset indices (e.g.
            ``iter`` of Detectron2's ``TrainingSampler(len(dataset), seed=seed)``).
        batch_size: images per batch of this process.
        seed: the run's data seed (shared by all processes).
        rank, world_size: this process and the process count (part of the saved layout).
        orientation: the group of each dataset index (:func:`orientation_of`) to batch images
            of one orientation together; None: no grouping.
        num_workers: data-loading processes (0: map in this process).

    Iterate it for batches; :attr:`delivered` counts the batches handed out, ``mark(i)``
    records that count at the end of training iteration ``i``.
    """

    def __init__(self, dataset: Sequence, mapper: Callable[[Any], Any],
                 index_stream: Callable[[int], Iterator[int]], batch_size: int, *, seed: int,
                 rank: int = 0, world_size: int = 1, orientation: Optional[Sequence[int]] = None,
                 num_workers: int = 0):
        self.dataset, self.mapper, self.index_stream = dataset, mapper, index_stream
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), rank, world_size
        self.orientation, self.num_workers = orientation, num_workers
        #: the batch this stream starts at (set by load_state_dict), and the batches delivered
        self.start = 0
        self.delivered = 0
        self._marks: Dict[int, int] = {}
        self._batches: Optional[Iterator[List[Any]]] = None

    def sibling(self, seed: int) -> "ResumableStream":
        """Another stream over the same data, mapper and layout, with its own ``seed`` (e.g. the
        matching passes' own stream: it leaves this one's batches as they are)."""
        return ResumableStream(self.dataset, self.mapper, self.index_stream, self.batch_size, seed=seed,
                               rank=self.rank, world_size=self.world_size, orientation=self.orientation,
                               num_workers=self.num_workers)

    # -- iteration --------------------------------------------------------------------------
    def __iter__(self) -> "ResumableStream":
        return self

    def __next__(self) -> List[Any]:
        if self._batches is None:  # the loading processes start at the first batch asked for
            loader = DataLoader(
                _SeededMapping(self.dataset, self.mapper, self.seed, self.rank),
                batch_sampler=_Plan(self.index_stream, self.seed, self.batch_size, self.orientation, self.start),
                num_workers=self.num_workers, collate_fn=_as_list,
            )
            with torch.random.fork_rng(devices=[]):  # (the loader draws its workers' seed: not the caller's draw)
                self._batches = iter(loader)
            self.delivered = self.start
        batch = next(self._batches)
        self.delivered += 1
        return batch

    @property
    def started(self) -> bool:
        return self._batches is not None

    # -- position ---------------------------------------------------------------------------
    def mark(self, iteration: int) -> None:
        """Record :attr:`delivered` as the position after training iteration ``iteration``
        (the last two iterations are kept: a checkpoint is of the last finished one)."""
        self._marks[iteration] = self.delivered if self.started else self.start
        for old in [i for i in self._marks if i < iteration - 1]:
            del self._marks[old]

    def position_after(self, iteration: Optional[int] = None) -> int:
        """The batches delivered by the end of ``iteration`` (:meth:`mark`); None, or an
        iteration not marked in this process (none finished yet): where the stream started."""
        if iteration is not None and iteration in self._marks:
            return self._marks[iteration]
        return self.start if iteration is not None else self.delivered

    def layout(self) -> Dict[str, Any]:
        return {"batch_size": self.batch_size, "world_size": self.world_size,
                "grouped": self.orientation is not None}

    def state_dict(self, iteration: Optional[int] = None) -> Dict[str, Any]:
        """``{"seed", "batches", "batch_size", "world_size", "grouped"}``: the position after
        ``iteration`` (:meth:`position_after`) and what it means."""
        return {"seed": self.seed, "batches": self.position_after(iteration), **self.layout()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue at the saved position with the saved seed. Raises :class:`StreamLayoutError`
        when the saved layout differs (the position would name other images), RuntimeError
        once batches were drawn."""
        if self.started:
            raise RuntimeError("the data stream's position can only be set before its first batch")
        saved = {k: state.get(k) for k in self.layout()}
        if saved != self.layout():
            raise StreamLayoutError(f"the saved data stream is for {_describe(saved)}, this run's for "
                                    f"{_describe(self.layout())}")
        self.seed, self.start, self.delivered = int(state["seed"]), int(state["batches"]), int(state["batches"])


def _describe(layout: Dict[str, Any]) -> str:
    grouped = "grouped by orientation" if layout.get("grouped") else "not grouped"
    processes = layout.get("world_size")
    return f"{processes} process{'' if processes == 1 else 'es'} x {layout.get('batch_size')} images, {grouped}"
