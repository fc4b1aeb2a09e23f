"""Multi-tensor (foreach) AdaBalance step: ``torch._foreach_*`` kernels per device and dtype."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _view_as_real

from ._step_scalars import step_scalars

__all__ = ["_multi_tensor_adabalance"]


def _multi_tensor_adabalance(
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
    if len(params) == 0:
        return

    grouped_tensors = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, exp_avg_lrs, max_exp_avg_sqs, state_steps]  # type: ignore[list-item]
    )
    for (
        device_params_,
        device_grads_,
        device_exp_avgs_,
        device_exp_avg_sqs_,
        device_exp_avg_lrs_,
        device_max_exp_avg_sqs_,
        device_state_steps_,
    ), _ in grouped_tensors.values():
        device_params = cast(list[Tensor], device_params_)
        device_grads = cast(list[Tensor], device_grads_)
        device_exp_avgs = cast(list[Tensor], device_exp_avgs_)
        device_exp_avg_sqs = cast(list[Tensor], device_exp_avg_sqs_)
        device_exp_avg_lrs = cast(list[Tensor], device_exp_avg_lrs_)
        device_max_exp_avg_sqs = cast(list[Tensor], device_max_exp_avg_sqs_)
        device_state_steps = cast(list[Tensor], device_state_steps_)

        if has_complex:
            state_lists = [device_grads, device_exp_avgs, device_exp_avg_sqs, device_exp_avg_lrs]
            if amsbound:
                state_lists.append(device_max_exp_avg_sqs)
            _view_as_real(device_params, *state_lists)

        if maximize:
            device_grads = torch._foreach_neg(device_grads)  # type: ignore[assignment]

        torch._foreach_add_(device_state_steps, 1)
        scalars = [
            step_scalars(
                step.item(),
                lr=lr,
                base_lr=base_lr,
                beta1=beta1,
                beta2=beta2,
                final_lr=final_lr,
                gamma=gamma,
            )
            for step in device_state_steps
        ]

        if weight_decay != 0:
            if decoupled_weight_decay:
                torch._foreach_mul_(device_params, 1 - lr * weight_decay)
            elif maximize:
                # device_grads is already a private copy: add in place.
                torch._foreach_add_(device_grads, device_params, alpha=weight_decay)
            else:
                device_grads = torch._foreach_add(  # type: ignore[assignment]
                    device_grads, device_params, alpha=weight_decay
                )

        torch._foreach_lerp_(device_exp_avgs, device_grads, 1 - beta1)
        torch._foreach_mul_(device_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(device_exp_avg_sqs, device_grads, device_grads, 1 - beta2)
        del device_grads

        if amsbound:
            # The reference divides by sqrt(1 - beta2**t) only without amsbound; kept for parity.
            torch._foreach_maximum_(device_max_exp_avg_sqs, device_exp_avg_sqs)
            buffers = torch._foreach_sqrt(device_max_exp_avg_sqs)
        else:
            buffers = torch._foreach_sqrt(device_exp_avg_sqs)
            torch._foreach_div_(buffers, [s.bias_correction2_sqrt for s in scalars])
        torch._foreach_add_(buffers, eps)

        # s = beta3 * s + (1 - beta3) * eta with eta = step_size / denom.
        torch._foreach_reciprocal_(buffers)
        torch._foreach_mul_(buffers, [(1 - beta3) * s.step_size for s in scalars])
        torch._foreach_mul_(device_exp_avg_lrs, beta3)
        torch._foreach_add_(device_exp_avg_lrs, buffers)

        torch._foreach_copy_(buffers, device_exp_avg_lrs)
        torch._foreach_clamp_min_(buffers, [s.lower for s in scalars])
        torch._foreach_clamp_max_(buffers, [s.upper for s in scalars])
        torch._foreach_mul_(buffers, device_exp_avgs)
        torch._foreach_sub_(device_params, buffers)
