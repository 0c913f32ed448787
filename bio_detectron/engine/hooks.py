"""Checks on the training loop shared by the detection and classification trainers."""

import math
import weakref

import torch

from .ddp import all_ranks_true

__all__ = ["FiniteLossCheck", "YACS_ADVICE"]

# What to try after a divergence, in the keys of a yacs config (MODEL.BIO).
YACS_ADVICE = (
    "Lower SOLVER.BASE_LR, try MODEL.BIO.SCALE 'mean_abs', or for detectors normalise FPN and head "
    "(MODEL.FPN.NORM, MODEL.RETINANET.NORM 'GN')."
)


class FiniteLossCheck:
    """
    A forward hook for the model the training loop calls: a non-finite loss stops the run before
    the backward pass and the optimizer step, so weights stay finite and no checkpoint written so
    far is touched. All processes agree on the verdict, so none of them waits forever in the next
    gradient all-reduce.
    """

    def __init__(self, trainer, advice: str = YACS_ADVICE):
        """
        Args:
            trainer: has ``iter`` and ``checkpointer``; register the check with
                ``trainer.model.register_forward_hook(FiniteLossCheck(trainer))``.
            advice: the end of the message: what to change, in the keys of the trainer's config.
        """
        self.trainer = weakref.proxy(trainer)
        self.advice = advice

    def __call__(self, module, inputs, loss_dict):
        if not module.training:  # evaluation hooks call the trainer's model too
            return
        losses = loss_dict if isinstance(loss_dict, dict) else {"total_loss": loss_dict}
        total = sum(v.detach().float().sum() for v in losses.values())
        if all_ranks_true(bool(torch.isfinite(total)), total.device):
            return
        bad = {k: float(v.detach().float().sum()) for k, v in losses.items()}
        bad = {k: v for k, v in bad.items() if not math.isfinite(v)}
        checkpoint = self.trainer.checkpointer.get_checkpoint_file() or "none written yet"
        raise FloatingPointError(
            f"Loss became non-finite at iteration {self.trainer.iter} "
            f"({bad or 'on another process'}); training stopped before the optimizer step. "
            f"The last checkpoint ({checkpoint}) is intact. {self.advice}"
        )
