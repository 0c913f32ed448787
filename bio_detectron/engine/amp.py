"""
Mixed precision, one rule for the three trainers (``SOLVER.AMP.ENABLED``, ``train.amp.enabled``),
chosen by :func:`amp_precision` and run by the inner step trainer :func:`build_step_trainer` makes:

* on CUDA: float16 autocast with a gradient scaler, detectron2's ``AMPTrainer``;
* on a CPU with native bfloat16 (AVX512-BF16 or AMX, as oneDNN reports it): bfloat16 autocast of
  the forward pass and the loss, :class:`CPUAutocastTrainer`; bfloat16 has float32's range, so no
  gradient scaler is needed;
* elsewhere (a CPU without native bfloat16, where it would be emulated and slow): full precision,
  detectron2's ``SimpleTrainer``, with a warning naming the key.

Weights, gradients and the optimizer stay float32; converted layers cast under autocast as
native ones do (see ``bio_detectron.core.layers``), and the alignment probe and the weight
mirror run outside the autocast region, in float32.
"""

import logging
import time
from typing import Optional

import torch
from detectron2.engine.train_loop import AMPTrainer, SimpleTrainer

__all__ = [
    "CPUAutocastTrainer",
    "amp_precision",
    "build_step_trainer",
    "cpu_has_native_bfloat16",
]

logger = logging.getLogger(__name__)


def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions and matrix products natively on this CPU."""
    # torch.ops.mkldnn._is_mkldnn_bf16_supported is private: torch has no public query of native
    # bfloat16 (torch.backends.cpu.get_cpu_capability() names the vector width only).
    # tests/test_upstream_internals.py checks it against the CPU's flags.
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def amp_precision(enabled: bool, device, key: str) -> Optional[torch.dtype]:
    """
    The one precision choice of the three trainers.

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
        # A copy of SimpleTrainer.run_step (detectron2 0.7) with the forward pass and the loss
        # inside autocast: SimpleTrainer has no seam around its forward, and autocast around the
        # whole step would also cast the backward pass, the hooks' probes and the optimizer step.
        # tests/test_upstream_internals.py fails when SimpleTrainer.run_step differs from this
        # copy without the autocast block.
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


# The step trainer of each precision (what amp_precision returns).
_STEPS = {None: SimpleTrainer, torch.float16: AMPTrainer, torch.bfloat16: CPUAutocastTrainer}


def build_step_trainer(
    precision: Optional[torch.dtype], model, data_loader, optimizer
) -> SimpleTrainer:
    """
    Args:
        precision: what :func:`amp_precision` returned.
        model, data_loader, optimizer: as detectron2's SimpleTrainer takes them.

    Returns:
        SimpleTrainer: detectron2's SimpleTrainer (full precision), its AMPTrainer (float16 with a
        gradient scaler) or :class:`CPUAutocastTrainer` (bfloat16), which runs one iteration.
    """
    return _STEPS[precision](model, data_loader, optimizer)
