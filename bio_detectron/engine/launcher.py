"""detectron2's ``launch``, with every process leaving its process group before it exits."""

import torch.distributed as dist
from detectron2.engine import launch as detectron2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

__all__ = ["launch"]


def launch(
    main_func,
    num_gpus_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
    """
    Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes per machine, as
    :func:`detectron2.engine.launch` does (the same arguments), and return its result when there
    is one process.

    The difference: after ``main_func`` returns, each process waits for the others and then
    destroys its process group. detectron2's worker lets the process exit with the group still
    open; with gloo (CPU processes), a process that exits while the group's threads still run can
    abort with ``terminate called without an active exception`` (SIGABRT), and ``launch`` then
    fails a run whose work was done. A process whose ``main_func`` raised leaves the group
    without waiting, so the others fail instead of hanging.
    """
    if num_machines * num_gpus_per_machine == 1:
        return main_func(*args)  # detectron2 starts no process and makes no group
    detectron2_launch(
        run_then_leave_group,
        num_gpus_per_machine,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=(main_func, args),
        timeout=timeout,
    )
    return None


def run_then_leave_group(main_func, args):
    """``main_func(*args)`` in a process of a group; every process leaves the group together."""
    try:
        main_func(*args)
        if dist.is_initialized():
            comm.synchronize()  # no process leaves while another still talks to it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
