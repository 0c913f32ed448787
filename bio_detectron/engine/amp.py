"""
Mixed precision, one rule for the three trainers (``SOLVER.AMP.ENABLED``, ``train.amp.enabled``):

* on CUDA: float16 autocast with a gradient scaler, detectron2's ``AMPTrainer``;
* on a CPU with native bfloat16 (AVX512-BF16 or AMX, as oneDNN reports it): bfloat16 autocast of
  the forward pass and the loss, :class:`CPUAutocastTrainer`; bfloat16 has float32's range, so no
  gradient scaler is needed;
* elsewhere (a CPU without native bfloat16, where it would be emulated and slow): full precision,
  with a warning naming the key.

Weights, gradients and the optimizer stay float32; converted layers cast under autocast as
native ones do (see ``bio_detectron.core.layers``), and the alignment probe and the weight
mirror run outside the autocast region, in float32.
"""

import logging
import time
from typing import Dict, Optional, Tuple

import torch
from detectron2.engine.train_loop import AMPTrainer, SimpleTrainer

__all__ = [
    "CPUAutocastTrainer",
    "amp_precision",
    "cpu_has_native_bfloat16",
    "precision_trainer_class",
    "with_precision",
]

logger = logging.getLogger(__name__)


def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions and matrix products natively on this CPU."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def amp_precision(enabled: bool, device, key: str) -> Optional[torch.dtype]:
    """
    Args:
        enabled: the config's AMP switch.
        device: the device training runs on.
        key: the switch's config key, for the warning.

    Returns:
        torch.dtype or None: float16 (CUDA), bfloat16 (CPU with native bfloat16), or None: full
        precision (AMP off, or a device without a fast half precision; then with a warning).
    """
    if not enabled:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bfloat16():
        return torch.bfloat16
    logger.warning(
        f"{key}=True, but {device} has no native half precision (a CPU without AVX512-BF16/AMX): "
        "training in float32"
    )
    return None


class CPUAutocastTrainer(SimpleTrainer):
    """
    detectron2's SimpleTrainer step with the forward pass and the loss under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``, as its AMPTrainer does on CUDA with float16
    (which needs CUDA). The backward pass and the optimizer step run outside autocast.
    """

    def run_step(self):
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


# (trainer class, precision) -> the class combining them, made once so that its identity is stable.
_COMBINED: Dict[Tuple[type, Optional[torch.dtype]], type] = {}
# The step of each precision: float16 with a gradient scaler (CUDA), bfloat16 autocast (CPU).
_STEPS = {None: SimpleTrainer, torch.float16: AMPTrainer, torch.bfloat16: CPUAutocastTrainer}
_PREFIXES = {None: "", torch.float16: "AMP", torch.bfloat16: "CPUAMP"}


def with_precision(base: type, precision: Optional[torch.dtype]) -> type:
    """
    Args:
        base: SimpleTrainer or a subclass of it (a trainer whose ``run_step`` is SimpleTrainer's).
        precision: what :func:`amp_precision` returned.

    Returns:
        type: ``base`` itself for full precision; else a subclass of ``base`` whose step is
        detectron2's AMPTrainer's (float16) or :class:`CPUAutocastTrainer`'s (bfloat16), e.g.
        ``AMPClassificationTrainer`` for the classification trainer.
    """
    step = _STEPS[precision]
    if issubclass(base, step):
        return base
    if issubclass(step, base):
        return step
    key = (base, precision)
    if key not in _COMBINED:
        name = _PREFIXES[precision] + base.__name__
        _COMBINED[key] = type(name, (base, step), {"__module__": base.__module__})
    return _COMBINED[key]


def precision_trainer_class(base: type, enabled: bool, device, key: str) -> type:
    """
    The one precision choice of the three trainers: ``with_precision(base, amp_precision(...))``.

    Args:
        base: the trainer class for full precision (SimpleTrainer or a subclass).
        enabled, device, key: the config's AMP switch, the device and the switch's key (see
            :func:`amp_precision`).
    """
    return with_precision(base, amp_precision(enabled, device, key))
