"""The AdaBalance update every kernel runs (the fp32 fused one and the low-bit one), and how its
result reaches the parameter."""

from __future__ import annotations

import torch
from torch import Tensor

from ._precision import stochastic_round_to_bf16
from ._step_scalars import HYPER

__all__ = ["_WRITE_MASTER", "adabalance_update", "write_mode_of", "write_param"]

# How the kernel's fp32 result reaches the parameter.
# (_WRITE_PARAM: copied into the parameter, rounded to nearest if its dtype is lower.)
_WRITE_PARAM, _WRITE_MASTER, _WRITE_STOCHASTIC = range(3)


def write_mode_of(param_dtype: torch.dtype, master_weights: bool, stochastic_round: bool) -> int:
    """How a kernel writes a parameter of ``param_dtype``: into its fp32 master copy too (with
    master weights), rounded stochastically (bf16 with ``stochastic_round``), or copied."""
    if master_weights:
        return _WRITE_MASTER
    if stochastic_round and param_dtype == torch.bfloat16:
        return _WRITE_STOCHASTIC
    return _WRITE_PARAM


def adabalance_update(
    value: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    exp_avg_lr: Tensor,
    max_exp_avg_sq: Tensor | None,
    hyper: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """One AdaBalance update, out of place: the arithmetic of every kernel (fp32 and low-bit).

    Args:
        value (Tensor): the parameter (or its master copy) in the compute dtype.
        grad (Tensor): its gradient (unscaled), any floating dtype.
        exp_avg, exp_avg_sq, exp_avg_lr (Tensor): ``m``, ``v`` and ``s`` in the compute dtype.
        max_exp_avg_sq (Tensor, optional): the running maximum of ``v`` (amsbound), else None.
        hyper (Tensor): the step's scalars, laid out by ``_step_scalars.KernelScalars``.

    Returns:
        tuple: the new ``(value, exp_avg, exp_avg_sq, exp_avg_lr, max_exp_avg_sq)``.
    """
    value = value * hyper[HYPER.decay]
    g = grad.to(exp_avg.dtype) * hyper[HYPER.grad_sign] + hyper[HYPER.l2] * value
    exp_avg = torch.lerp(exp_avg, g, hyper[HYPER.one_minus_beta1])
    exp_avg_sq = exp_avg_sq * hyper[HYPER.beta2] + g * g * hyper[HYPER.one_minus_beta2]
    if max_exp_avg_sq is not None:
        max_exp_avg_sq = torch.maximum(max_exp_avg_sq, exp_avg_sq)
        denom = max_exp_avg_sq.sqrt() + hyper[HYPER.eps]
    else:
        denom = exp_avg_sq.sqrt() / hyper[HYPER.bias_correction2_sqrt] + hyper[HYPER.eps]
    exp_avg_lr = exp_avg_lr * hyper[HYPER.beta3] + hyper[HYPER.eta_scale] / denom
    rate = torch.minimum(torch.maximum(exp_avg_lr, hyper[HYPER.lower]), hyper[HYPER.upper])
    return value - rate * exp_avg, exp_avg, exp_avg_sq, exp_avg_lr, max_exp_avg_sq


def write_param(param: Tensor, master: Tensor | None, value: Tensor, write_mode: int) -> None:
    """Write a kernel's fp32 result into the parameter (and its master copy) by ``write_mode``."""
    if write_mode == _WRITE_MASTER:
        master.copy_(value)  # type: ignore[union-attr]
        param.copy_(value)
    elif write_mode == _WRITE_STOCHASTIC:
        param.copy_(stochastic_round_to_bf16(value))
    else:
        param.copy_(value)
