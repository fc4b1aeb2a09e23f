"""Per-tensor AdaBalance step: one tensor at a time, one temporary per tensor."""

from __future__ import annotations

import torch
from torch import Tensor

from ._precision import compute_dtype, write_back
from ._step_scalars import step_scalars_of
from .options import Hyper

__all__ = ["_single_tensor_adabalance"]


def _single_tensor_adabalance(
    *,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_lrs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    master_params: list[Tensor] | None,
    hyper: Hyper,
    has_complex: bool,
) -> None:
    amsbound, lr, weight_decay = hyper.amsbound, hyper.lr, hyper.weight_decay
    eps = hyper.denominator_eps
    decoupled_weight_decay, maximize = hyper.decoupled_weight_decay, hyper.maximize
    for i, param in enumerate(params):
        grad = grads[i]
        exp_avg = exp_avgs[i]
        exp_avg_sq = exp_avg_sqs[i]
        exp_avg_lr = exp_avg_lrs[i]
        max_exp_avg_sq = max_exp_avg_sqs[i] if amsbound else None
        step_t = state_steps[i]

        step_t += 1
        scalars = step_scalars_of(step_t.item(), hyper)

        # The tensor the arithmetic updates: the parameter itself, its fp32 master copy, or a
        # temporary fp32 copy of a low-precision parameter that has no master copy.
        low_precision = param.dtype != compute_dtype(param.dtype)
        if master_params is not None:
            target = master_params[i]
        elif low_precision:
            target = param.to(compute_dtype(param.dtype))
        else:
            target = param

        if has_complex and torch.is_complex(target):
            grad = torch.view_as_real(grad)
            exp_avg = torch.view_as_real(exp_avg)
            exp_avg_sq = torch.view_as_real(exp_avg_sq)
            exp_avg_lr = torch.view_as_real(exp_avg_lr)
            if max_exp_avg_sq is not None:
                max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
            target = torch.view_as_real(target)

        if weight_decay != 0 and decoupled_weight_decay:
            target.mul_(1 - lr * weight_decay)

        # One temporary per tensor: a private copy of the gradient where it must change (sign,
        # L2 term, dtype), reused below for the denominator and the clamped rate.
        l2 = weight_decay != 0 and not decoupled_weight_decay
        if maximize or l2 or grad.dtype != target.dtype:
            buffer = grad.to(target.dtype, copy=True)
            if maximize:
                buffer.neg_()
            if l2:
                buffer.add_(target, alpha=weight_decay)
            grad = buffer
        else:
            buffer = torch.empty_like(target)

        exp_avg.lerp_(grad, 1 - hyper.beta1)
        exp_avg_sq.mul_(hyper.beta2).addcmul_(grad, grad, value=1 - hyper.beta2)

        if max_exp_avg_sq is not None:
            # The reference divides by sqrt(1 - beta2**t) only without amsbound; kept for parity.
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            torch.sqrt(max_exp_avg_sq, out=buffer)
        else:
            torch.sqrt(exp_avg_sq, out=buffer).div_(scalars.bias_correction2_sqrt)
        buffer.add_(eps)

        # s = beta3 * s + (1 - beta3) * eta with eta = step_size / denom: one lerp pass over s.
        buffer.reciprocal_().mul_(scalars.step_size)
        exp_avg_lr.lerp_(buffer, 1 - hyper.beta3)

        torch.clamp(exp_avg_lr, scalars.lower, scalars.upper, out=buffer)
        target.addcmul_(buffer, exp_avg, value=-1)

        if low_precision:
            write_back(param, target, hyper.stochastic_round)
        # Free this tensor's temporaries before the next tensor allocates its own.
        del buffer, grad, target
