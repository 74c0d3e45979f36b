"""The training loader of MGD and plain RetinaNet runs: Detectron2's, resumable at any batch.

``build_train_stream(cfg)`` builds what ``build_detection_train_loader(cfg)`` builds (the same
dataset dicts, ``DatasetMapper(cfg, True)``, the ``DATALOADER.SAMPLER_TRAIN`` sampler, batches
of ``SOLVER.IMS_PER_BATCH / processes`` images grouped by orientation under
``DATALOADER.ASPECT_RATIO_GROUPING``, ``DATALOADER.NUM_WORKERS`` loading processes) as a
:class:`mgd.stream.ResumableStream`: batch ``b`` is a pure function of the data seed, the
process and ``b``, and the stream's position is saved in every checkpoint, so a resumed run
reads the images, in the order and with the augmentation, that the uninterrupted run would
have. The data seed is ``SEED`` when it is >= 0, else one drawn at the start and shared by
the processes (and saved: a resumed run keeps it).

Samplers other than ``TrainingSampler`` and ``RepeatFactorTrainingSampler`` get upstream's
loader, with one warning line: such a run resumes with a restarted data stream.
"""
import inspect
import logging
from typing import Iterator

from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

from mgd.stream import ResumableStream, orientation_of

__all__ = ["build_train_stream", "data_seed", "RESUMABLE_SAMPLERS"]

logger = logging.getLogger("detectron2.mgd")

RESUMABLE_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")


def data_seed(cfg) -> int:
    """``SEED`` when >= 0, else a seed drawn by rank 0 and shared (every process calls this)."""
    return int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())


def _repeat_factors(cfg, dataset_dicts):
    compute = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
    kwargs = {}
    if "sqrt" in inspect.signature(compute).parameters and "REPEAT_SQRT" in cfg.DATALOADER:
        kwargs["sqrt"] = cfg.DATALOADER.REPEAT_SQRT
    return compute(dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD, **kwargs)


def build_train_stream(cfg):
    """The training loader of ``cfg`` (module doc): a ResumableStream, or upstream's loader
    for another sampler."""
    sampler_name = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler_name not in RESUMABLE_SAMPLERS:
        logger.warning(f"DATALOADER.SAMPLER_TRAIN {sampler_name}: Detectron2's own training loader, whose "
                       f"position is not saved (a resumed run restarts its data stream); "
                       f"{' and '.join(RESUMABLE_SAMPLERS)} resume exactly")
        return build_detection_train_loader(cfg)
    dataset_dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    world_size = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {total} is not divisible by the {world_size} processes")
    if sampler_name == "TrainingSampler":
        def index_stream(seed: int) -> Iterator[int]:
            return iter(TrainingSampler(len(dataset_dicts), seed=seed))
    else:
        repeat_factors = _repeat_factors(cfg, dataset_dicts)

        def index_stream(seed: int) -> Iterator[int]:
            return iter(RepeatFactorTrainingSampler(repeat_factors, seed=seed))
    grouped = cfg.DATALOADER.ASPECT_RATIO_GROUPING
    orientation = bytes(orientation_of(d["width"], d["height"]) for d in dataset_dicts) if grouped else None
    stream = ResumableStream(
        DatasetFromList(dataset_dicts, copy=False), DatasetMapper(cfg, True), index_stream,
        total // world_size, seed=data_seed(cfg), rank=comm.get_rank(), world_size=world_size,
        orientation=orientation, num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    logger.info(f"Training data: {sampler_name} over {len(dataset_dicts)} images, {total // world_size} per batch "
                f"and process{', grouped by orientation' if grouped else ''}, data seed {stream.seed}; "
                "its position is saved with every checkpoint")
    return stream
