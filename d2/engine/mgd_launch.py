"""Multi-process launch for MGD: upstream's launcher on GPUs, gloo processes on CPU.

The pinned ``detectron2.engine.launch`` asserts CUDA and hard-codes NCCL. ``launch`` here
has the same signature: with CUDA available it delegates to upstream's unchanged; without
it, it spawns ``num_gpus_per_machine`` CPU processes per machine that join a gloo process
group, set up ``detectron2.utils.comm``'s local process group the way upstream does, and
share the machine's cores between them.
"""
import logging
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine.launch import _find_free_port
from detectron2.engine.launch import launch as _upstream_launch
from detectron2.utils import comm
from detectron2.utils.mgd_compat import create_local_process_group

__all__ = ["launch"]


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=()):
    """Run ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes."""
    if torch.cuda.is_available():
        return _upstream_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args)
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url=auto is only for single-machine jobs")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args),
        daemon=False,
    )


def _cpu_worker(local_rank, main_func, world_size, procs_per_machine, machine_rank, dist_url, args):
    global_rank = machine_rank * procs_per_machine + local_rank
    try:
        dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank)
    except Exception:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise
    comm.synchronize()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // procs_per_machine))
    create_local_process_group(procs_per_machine)
    main_func(*args)
