"""Multi-tensor (foreach) AdaBalance step: ``torch._foreach_*`` kernels per device and dtype.

Tensors are processed in chunks, so the step's temporaries never exceed one chunk: at most 10%
of the parameters' elements, or the largest tensor if that is bigger (torch's foreach AdamW
allocates a full-size temporary for every parameter at once).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _view_as_real

from ._precision import compute_dtype, write_back
from ._step_scalars import StepScalars, step_scalars_of
from .options import Hyper

__all__ = ["_multi_tensor_adabalance", "chunk_bounds", "transient_budget"]

TRANSIENT_FRACTION = 0.1


def transient_budget(numels: list[int]) -> int:
    """Most elements one chunk may hold: 10% of all elements, or the largest tensor.

    Args:
        numels (list of int): element counts of the tensors of one step.
    """
    return max(int(sum(numels) * TRANSIENT_FRACTION), max(numels, default=0))


def chunk_bounds(numels: list[int], budget: int) -> list[tuple[int, int]]:
    """Split ``range(len(numels))`` into consecutive ``(start, end)`` runs of at most ``budget``
    elements each (a tensor larger than the budget forms a run of its own).

    Args:
        numels (list of int): element counts, in order.
        budget (int): most elements per run.
    """
    bounds, start, total = [], 0, 0
    for index, numel in enumerate(numels):
        if index > start and total + numel > budget:
            bounds.append((start, index))
            start, total = index, 0
        total += numel
    if start < len(numels):
        bounds.append((start, len(numels)))
    return bounds


def _multi_tensor_adabalance(
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
    if len(params) == 0:
        return
    budget = transient_budget([p.numel() for p in params])
    named_lists = {
        "params": params,
        "grads": grads,
        "exp_avgs": exp_avgs,
        "exp_avg_sqs": exp_avg_sqs,
        "exp_avg_lrs": exp_avg_lrs,
        "max_exp_avg_sqs": max_exp_avg_sqs,
        "state_steps": state_steps,
        "master_params": master_params if master_params is not None else [],
    }
    grouped_tensors = Optimizer._group_tensors_by_device_and_dtype(
        list(named_lists.values())  # type: ignore[arg-type]
    )
    for device_lists_, _ in grouped_tensors.values():
        device = {
            name: cast(list[Tensor], tensors)
            for name, tensors in zip(named_lists, device_lists_, strict=True)
        }
        device_params, device_grads = device["params"], device["grads"]
        device_exp_avgs, device_exp_avg_sqs = device["exp_avgs"], device["exp_avg_sqs"]
        device_exp_avg_lrs = device["exp_avg_lrs"]
        device_max_exp_avg_sqs = device["max_exp_avg_sqs"]
        device_state_steps = device["state_steps"]
        device_master_params = device["master_params"] if master_params is not None else None

        if has_complex:
            state_lists = [device_grads, device_exp_avgs, device_exp_avg_sqs, device_exp_avg_lrs]
            if hyper.amsbound:
                state_lists.append(device_max_exp_avg_sqs)
            _view_as_real(device_params, *state_lists)

        torch._foreach_add_(device_state_steps, 1)
        scalars = [step_scalars_of(step.item(), hyper) for step in device_state_steps]
        for start, end in chunk_bounds([p.numel() for p in device_params], budget):
            _step_chunk(
                params=device_params[start:end],
                grads=device_grads[start:end],
                exp_avgs=device_exp_avgs[start:end],
                exp_avg_sqs=device_exp_avg_sqs[start:end],
                exp_avg_lrs=device_exp_avg_lrs[start:end],
                max_exp_avg_sqs=device_max_exp_avg_sqs[start:end] if hyper.amsbound else None,
                master_params=(
                    device_master_params[start:end] if device_master_params is not None else None
                ),
                scalars=scalars[start:end],
                hyper=hyper,
            )


def _step_chunk(
    *,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_lrs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    master_params: list[Tensor] | None,
    scalars: list[StepScalars],
    hyper: Hyper,
) -> None:
    weight_decay, decoupled_weight_decay = hyper.weight_decay, hyper.decoupled_weight_decay
    maximize = hyper.maximize
    low_precision = params[0].dtype != compute_dtype(params[0].dtype)
    if master_params is not None:
        targets = master_params
    elif low_precision:
        targets = [p.to(compute_dtype(p.dtype)) for p in params]
    else:
        targets = params

    if weight_decay != 0 and decoupled_weight_decay:
        torch._foreach_mul_(targets, 1 - hyper.lr * weight_decay)

    # One temporary list at a time per chunk (each is dropped before the next is made): a
    # private copy of the gradients where they must change (sign, L2 term, dtype), then the
    # denominators, then the clamped rates. No torch._foreach_copy_: DTensor lacks it.
    l2 = weight_decay != 0 and not decoupled_weight_decay
    effective_grads = grads
    if low_precision:
        effective_grads = [g.to(compute_dtype(g.dtype)) for g in grads]
    elif maximize or l2:
        effective_grads = torch._foreach_mul(grads, 1.0)
    if maximize:
        torch._foreach_neg_(effective_grads)
    if l2:
        torch._foreach_add_(effective_grads, targets, alpha=weight_decay)

    torch._foreach_lerp_(exp_avgs, effective_grads, 1 - hyper.beta1)
    torch._foreach_mul_(exp_avg_sqs, hyper.beta2)
    torch._foreach_addcmul_(exp_avg_sqs, effective_grads, effective_grads, 1 - hyper.beta2)
    del effective_grads

    if max_exp_avg_sqs is not None:
        # The reference divides by sqrt(1 - beta2**t) only without amsbound; kept for parity.
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        second_moments = max_exp_avg_sqs
    else:
        second_moments = exp_avg_sqs
    buffers = torch._foreach_sqrt(second_moments)
    if max_exp_avg_sqs is None:
        torch._foreach_div_(buffers, [s.bias_correction2_sqrt for s in scalars])
    torch._foreach_add_(buffers, hyper.denominator_eps)

    # s = beta3 * s + (1 - beta3) * eta with eta = step_size / denom: one lerp pass over s.
    torch._foreach_reciprocal_(buffers)
    torch._foreach_mul_(buffers, [s.step_size for s in scalars])
    torch._foreach_lerp_(exp_avg_lrs, buffers, 1 - hyper.beta3)

    del buffers
    buffers = torch._foreach_clamp_min(exp_avg_lrs, [s.lower for s in scalars])
    torch._foreach_clamp_max_(buffers, [s.upper for s in scalars])
    torch._foreach_addcmul_(targets, buffers, exp_avgs, value=-1)

    if low_precision:
        for param, target in zip(params, targets, strict=True):
            write_back(param, target, hyper.stochastic_round)
