"""DistributedDataParallel that also works for CPU processes (gloo)."""

import torch
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..core.convert import make_feedback_now

__all__ = [
    "create_ddp_model",
    "all_ranks_true",
    "sync_batchnorm_if_distributed",
    "unwrap_model",
]


def create_ddp_model(model, *, fp16_compression=False, **kwargs):
    """
    detectron2's ``create_ddp_model``, except that ``device_ids`` is only set for a model on a
    CUDA device (DistributedDataParallel refuses device_ids for CPU modules, which detectron2
    always passes), and that converted layers make their feedback tensors again from the weights
    DistributedDataParallel has broadcast from rank 0, except those a checkpoint restored.
    """
    # A copy of detectron2.engine.defaults.create_ddp_model (0.7) with that one difference, and
    # fp16 compression only for CUDA (NCCL); it has no seam for the device. The copy in
    # tests/test_upstream_internals.py fails when detectron2's function changes.
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    if on_cuda:
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    ddp = DistributedDataParallel(model, **kwargs)
    # Each process converted its own initial weights, and a rule's feedback tensor may depend on
    # W; DistributedDataParallel has now given every process rank 0's parameters, but not its
    # buffers (detectron2 passes broadcast_buffers=False). Made again from those weights, every
    # process has the same B. A checkpoint's feedback tensors are the same everywhere already
    # and may be trained ones (Kolen-Pollack): kept.
    make_feedback_now(model, keep_restored=True)
    if fp16_compression and on_cuda:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def all_ranks_true(flag: bool, device) -> bool:
    """True if ``flag`` is true on every process (a no-op with one process)."""
    if comm.get_world_size() == 1:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    torch.distributed.all_reduce(t)
    return t.item() == 0


def sync_batchnorm_if_distributed(model, cfg):
    """
    BatchNorm layers become SyncBatchNorm when ``MODEL.BIO.SYNC_BN`` is on and several CUDA
    processes train (SyncBatchNorm has no CPU implementation).
    """
    if (
        cfg.MODEL.BIO.SYNC_BN
        and comm.get_world_size() > 1
        and torch.device(cfg.MODEL.DEVICE).type == "cuda"
    ):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside any DistributedDataParallel / DataParallel wrappers of ``model``."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model
