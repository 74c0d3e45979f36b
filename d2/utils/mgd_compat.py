"""The Detectron2 API that differs between the two supported commits, in one place.

MGD runs on the pinned Detectron2 (369a57d3, August 2020: the MGD authors' PR #1820) and on
today's (main 02b5c4e2, v0.6 and later). Every function here asks what the imported
Detectron2 has (attributes, signatures); none compares versions. What changed upstream, with
the commit that changed it (docs/detectron2-versions.md has the full table):

==============================  =====================================  ======================
what                            the pin                                today's
==============================  =====================================  ======================
ResNet stages                   ``stages_and_names``                   ``stages`` +
                                                                       ``stage_names``
                                                                       (ce94234b)
training loop                   DefaultTrainer *is* a SimpleTrainer    wraps one in
                                                                       ``_trainer`` (406f5a8d)
metrics                         ``_write_metrics(dict_with_time)``     ``_write_metrics(loss_dict,
                                + ``_detect_anomaly``                  data_time)``, raises on
                                                                       non-finite (99e21fc5)
DDP                             ``wrap_model_with_ddp`` method         ``create_ddp_model`` with
                                (PR #1820 only)                        ``device_ids`` (57fe696f)
checkpointables                 optimizer, scheduler                   ``trainer`` (iteration,
                                                                       optimizer, scheduler
                                                                       hook) (085be5a3)
RetinaNet ``loss_normalizer``   set in ``__init__``                    created lazily by
                                                                       ``_ema_update`` (efd8f4d9)
COCOEvaluator                   ``(name, cfg, distributed, dir)``      ``(name, tasks, ...)``
local process group             set by hand                            ``create_local_process_
                                                                       group``
==============================  =====================================  ======================
"""
import contextlib
import inspect
from typing import Iterator, List, Mapping, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.utils import comm

__all__ = [
    "resnet_stages",
    "inner_trainer",
    "training_data_iter",
    "write_metrics",
    "build_ddp",
    "unwrap_model",
    "ddp_built_by",
    "INITIAL_LOSS_NORMALIZER",
    "get_loss_normalizer",
    "set_loss_normalizer",
    "coco_evaluator",
    "create_local_process_group",
]


def resnet_stages(resnet: nn.Module) -> List[Tuple[nn.Module, str]]:
    """``[(stage, "res2"), ...]`` of a Detectron2 ResNet, in order."""
    pairs = getattr(resnet, "stages_and_names", None)
    if pairs is not None:
        return list(pairs)
    return list(zip(resnet.stages, resnet.stage_names))


def inner_trainer(trainer):
    """The object that runs the training step: the trainer itself at the pin, its
    ``_trainer`` (a SimpleTrainer) today."""
    return getattr(trainer, "_trainer", trainer)


def training_data_iter(trainer) -> Iterator:
    """The trainer's iterator over training batches (the one its steps draw from)."""
    return inner_trainer(trainer)._data_loader_iter


def write_metrics(trainer, loss_dict: Mapping[str, torch.Tensor], data_time: float) -> None:
    """Put one step's losses and data time in the event storage, and raise
    ``FloatingPointError`` when the losses are not finite (as upstream's step does)."""
    inner = inner_trainer(trainer)
    inner.iter = trainer.iter
    if "data_time" in inspect.signature(inner._write_metrics).parameters:
        inner._write_metrics(loss_dict, data_time)  # checks finiteness too
        return
    inner._write_metrics({**loss_dict, "data_time": data_time})
    inner._detect_anomaly(sum(loss_dict.values()), loss_dict)


def build_ddp(model: nn.Module) -> nn.Module:
    """The model under DistributedDataParallel as MGD needs it, the same on every version:
    ``find_unused_parameters`` (ignored positions), no buffer broadcast (the teacher's frozen
    statistics stay each process's own copy), ``device_ids`` only for a CUDA module (NCCL; a
    CPU module under gloo takes none). One process: the model itself."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    return DistributedDataParallel(
        model,
        device_ids=[comm.get_local_rank()] if on_cuda else None,
        broadcast_buffers=False,
        find_unused_parameters=True,
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def ddp_built_by(build):
    """Inside, ``DefaultTrainer.__init__`` wraps its model with ``build`` on every version.

    At the pin it calls the trainer's ``wrap_model_with_ddp(cfg, model)`` (override that
    method); today it calls ``detectron2.engine.defaults.create_ddp_model``, a module function
    replaced here for the duration of the block.
    """
    from detectron2.engine import defaults

    original = getattr(defaults, "create_ddp_model", None)
    if original is None:
        yield
        return
    defaults.create_ddp_model = lambda model, **_upstream_options: build(model)
    try:
        yield
    finally:
        defaults.create_ddp_model = original


#: RetinaNet's ``loss_normalizer`` before its first training step, on every version
INITIAL_LOSS_NORMALIZER = 100.0


def get_loss_normalizer(retinanet: nn.Module) -> float:
    """RetinaNet's running foreground count (``loss_normalizer``), which divides its detection
    losses. Today's RetinaNet creates the attribute lazily at its first step (until then it
    starts from the same 100 the pin sets in ``__init__``)."""
    return float(getattr(retinanet, "loss_normalizer", INITIAL_LOSS_NORMALIZER))


def set_loss_normalizer(retinanet: nn.Module, value: float) -> None:
    """Set RetinaNet's ``loss_normalizer`` (the lazily created attribute too: ``hasattr`` is no
    test of whether it is used)."""
    retinanet.loss_normalizer = float(value)


def coco_evaluator(dataset_name: str, cfg, output_dir: str):
    """COCO box evaluation of ``dataset_name`` (distributed) writing into ``output_dir``."""
    from detectron2.evaluation import COCOEvaluator

    if "tasks" in inspect.signature(COCOEvaluator.__init__).parameters:
        return COCOEvaluator(dataset_name, tasks=("bbox",), distributed=True, output_dir=output_dir)
    return COCOEvaluator(dataset_name, cfg, True, output_dir)


def create_local_process_group(procs_per_machine: int) -> None:
    """``comm``'s group of the processes on this machine (``comm.get_local_rank()`` needs it).
    Every process calls it, after ``init_process_group``."""
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(procs_per_machine)
        return
    import torch.distributed as dist

    assert comm._LOCAL_PROCESS_GROUP is None
    machines = comm.get_world_size() // procs_per_machine
    for i in range(machines):
        group = dist.new_group(list(range(i * procs_per_machine, (i + 1) * procs_per_machine)))
        if i == comm.get_rank() // procs_per_machine:
            comm._LOCAL_PROCESS_GROUP = group
