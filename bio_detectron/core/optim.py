"""Batch-manhattan SGD: the optimizer of the seed paper's sign-symmetry runs, in plain PyTorch."""

import math
import numbers

import torch

__all__ = ["BatchManhattanSGD"]


class BatchManhattanSGD(torch.optim.Optimizer):
    """
    SGD with momentum, weight decay and, per parameter group, batch manhattan and no sign change,
    as ``BMNSC_SGD`` of the seed paper's code. With both switches off a group steps exactly as
    ``torch.optim.SGD``.

    Per parameter W with gradient grad (v: the momentum buffer):

        d = sign(grad) if batch_manhattan else grad
        d = d + weight_decay * W
        v = d at the first step, else momentum * v + (1 - dampening) * d
        d = d + momentum * v if nesterov else v
        W = W - lr * d
        if no_sign_change: W = +lower_bound where sign(W_before) * sign(W) <= 0 and W_before >= 0,
                               -lower_bound where sign(W_before) * sign(W) <= 0 and W_before < 0
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        batch_manhattan: bool = True,
        no_sign_change: bool = False,
        lower_bound: float = 1e-10,
    ):
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not (isinstance(value, numbers.Real) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value!r}: must be a finite number >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            batch_manhattan=bool(batch_manhattan),
            no_sign_change=bool(no_sign_change),
            lower_bound=abs(float(lower_bound)),
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = torch.sign(p.grad) if group["batch_manhattan"] else p.grad
                if wd != 0:
                    d = d.add(p, alpha=wd)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.clone(d).detach()
                    else:
                        buf.mul_(momentum).add_(d, alpha=1 - group["dampening"])
                    d = d.add(buf, alpha=momentum) if group["nesterov"] else buf
                if not group["no_sign_change"]:
                    p.add_(d, alpha=-lr)
                    continue
                before = p.clone()
                p.add_(d, alpha=-lr)
                flipped = torch.sign(before).mul_(torch.sign(p)) <= 0
                positive = before >= 0
                p.masked_fill_(flipped & positive, group["lower_bound"])
                p.masked_fill_(flipped & ~positive, -group["lower_bound"])
        return loss
