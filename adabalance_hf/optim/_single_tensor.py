"""Per-tensor AdaBalance step: one tensor at a time, one reused temporary per tensor."""

from __future__ import annotations

import torch
from torch import Tensor

from ._step_scalars import step_scalars

__all__ = ["_single_tensor_adabalance"]


def _single_tensor_adabalance(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_lrs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    amsbound: bool,
    has_complex: bool,
    lr: float,
    base_lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    final_lr: float,
    gamma: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    for i, param in enumerate(params):
        grad = grads[i] if not maximize else -grads[i]
        exp_avg = exp_avgs[i]
        exp_avg_sq = exp_avg_sqs[i]
        exp_avg_lr = exp_avg_lrs[i]
        step_t = state_steps[i]

        step_t += 1
        scalars = step_scalars(
            step_t.item(),
            lr=lr,
            base_lr=base_lr,
            beta1=beta1,
            beta2=beta2,
            final_lr=final_lr,
            gamma=gamma,
        )

        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)

        if has_complex and torch.is_complex(param):
            grad = torch.view_as_real(grad)
            exp_avg = torch.view_as_real(exp_avg)
            exp_avg_sq = torch.view_as_real(exp_avg_sq)
            exp_avg_lr = torch.view_as_real(exp_avg_lr)
            if amsbound:
                max_exp_avg_sqs[i] = torch.view_as_real(max_exp_avg_sqs[i])
            param = torch.view_as_real(param)

        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        if amsbound:
            # The reference divides by sqrt(1 - beta2**t) only without amsbound; kept for parity.
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            buffer = max_exp_avg_sqs[i].sqrt()
        else:
            buffer = exp_avg_sq.sqrt().div_(scalars.bias_correction2_sqrt)
        buffer.add_(eps)

        # s = beta3 * s + (1 - beta3) * eta with eta = step_size / denom, accumulated in place.
        buffer.reciprocal_().mul_((1 - beta3) * scalars.step_size)
        exp_avg_lr.mul_(beta3).add_(buffer)

        torch.clamp(exp_avg_lr, scalars.lower, scalars.upper, out=buffer)
        param.sub_(buffer.mul_(exp_avg))
