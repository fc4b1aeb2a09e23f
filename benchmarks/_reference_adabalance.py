"""Baseline for the benchmark: the AdaBalance step written the way the reference code writes it.

The reference code (ahddlwq/AdaBalance 0.0.5) steps with one Python loop over tensors and builds
several full-size temporaries per tensor (defect 7 in ``docs/algorithm.md``). This class
keeps that structure and cost so that the benchmark has an honest baseline:

* base learning rates captured once, in a list, at construction (zipped with the groups);
* per tensor: ``v / bc2`` (temporary 1, made the denominator in place), ``torch.full_like`` of the
  step size divided by it (temporary 2, eta), ``(1 - beta3) * eta`` (temporary 3),
  ``exp_avg_lr.clamp(lower, upper)`` (temporary 4) multiplied by ``m`` in place, and its negation
  (temporary 5) added to the parameter;
* the deprecated ``add_(scalar, tensor)`` overloads are rewritten with ``alpha=``/``value=``.

The arithmetic follows the equations of the spec (``eta = (lr / bc1) / (sqrt(v / bc2) + eps)``,
``s = beta3 * s + (1 - beta3) * eta``, ``p -= clamp(s, lower, upper) * m``), so its results match
``adabalance_hf.AdaBalance`` up to rounding: ``tests/test_reference_code.py`` checks it against the
spec's float64 oracle. This is a baseline for speed and memory only: it keeps the reference's
other defects (``gamma == 0`` divides by zero, groups added later are never stepped) and is not
part of the package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["ReferenceAdaBalance"]


class ReferenceAdaBalance(Optimizer):
    """AdaBalance in the reference code's style: one loop, full-size temporaries per tensor."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float = 0.999,
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsbound: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            beta3=beta3,
            final_lr=final_lr,
            gamma=gamma,
            eps=eps,
            weight_decay=weight_decay,
            amsbound=amsbound,
        )
        super().__init__(params, defaults)
        self.base_lrs = [group["lr"] for group in self.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group, base_lr in zip(self.param_groups, self.base_lrs, strict=False):
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("AdaBalance does not support sparse gradients")
                amsbound = group["amsbound"]

                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["exp_avg_lr"] = torch.zeros_like(p)
                    if amsbound:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)

                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg_lr = state["exp_avg_lr"]
                beta1, beta2 = group["betas"]
                beta3 = group["beta3"]
                state["step"] += 1
                step = state["step"]

                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])

                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                if amsbound:
                    max_exp_avg_sq = state["max_exp_avg_sq"]
                    torch.max(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
                    denom = max_exp_avg_sq.sqrt().add_(group["eps"])
                else:
                    denom = (exp_avg_sq / bias_correction2).sqrt_().add_(group["eps"])

                step_size = group["lr"] / bias_correction1
                step_size = torch.full_like(denom, step_size)
                step_size.div_(denom)
                exp_avg_lr.mul_(beta3).add_((1 - beta3) * step_size)

                final_lr = group["final_lr"] * group["lr"] / base_lr
                lower_bound = final_lr * (1 - 1 / (group["gamma"] * step + 1))
                upper_bound = final_lr * (1 + 1 / (group["gamma"] * step))
                step_size = exp_avg_lr.clamp(lower_bound, upper_bound)
                step_size.mul_(exp_avg)

                p.add_(-step_size)

        return loss
