"""Functional AdaBalance: one entry point that dispatches to the per-tensor or foreach path."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach, _foreach_supported_types

from ._fused import _fused_adabalance, fused_kernel_supports
from ._multi_tensor import _multi_tensor_adabalance
from ._single_tensor import _single_tensor_adabalance

__all__ = ["adabalance"]


def _check_foreach_supported(params: list[Tensor]) -> None:
    for index, param in enumerate(params):
        if type(param) not in _foreach_supported_types:
            raise RuntimeError(
                f"AdaBalance(foreach=True) cannot step parameter {index} of this group: it is a "
                f"{type(param).__module__}.{type(param).__qualname__}, and torch._foreach_* "
                f"kernels only take {[t.__name__ for t in _foreach_supported_types]}. "
                f"Pass foreach=False (per-tensor path) or leave foreach=None to choose "
                f"automatically."
            )


def adabalance(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_lrs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    master_params: list[Tensor] | None = None,
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool = False,
    amsbound: bool,
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
    stochastic_round: bool = False,
) -> None:
    r"""Functional API that performs the AdaBalance computation of one step.

    See :class:`adabalance_hf.AdaBalance` for the algorithm and the meaning of each
    hyper-parameter. The lists are parallel: entry ``i`` of each belongs to ``params[i]``.

    Args:
        params (list of Tensor): parameters to update in place.
        grads (list of Tensor): their (dense) gradients.
        exp_avgs (list of Tensor): first moments ``m``.
        exp_avg_sqs (list of Tensor): second moments ``v``.
        exp_avg_lrs (list of Tensor): smoothed learning rates ``s``.
        max_exp_avg_sqs (list of Tensor): running maxima of ``v`` (empty unless ``amsbound``).
        state_steps (list of Tensor): per-parameter step counts, incremented here.
        master_params (list of Tensor, optional): fp32 master copies of low-precision
            parameters; the arithmetic updates them and the result is written into ``params``.
            Default: ``None``
        foreach (bool, optional): use the ``torch._foreach_*`` path; ``None`` picks it where
            torch would (CUDA tensors). Default: ``None``
        fused (bool, optional): use the compiled fused kernel (contiguous tensors of at least
            two elements; others take the per-tensor path). Default: ``None``
        has_complex (bool): whether any parameter is complex. Default: ``False``
        amsbound (bool): use the running maximum of ``v``.
        lr (float): current learning rate.
        base_lr (float): learning rate of the group when it was created.
        beta1 (float): decay rate of ``m``.
        beta2 (float): decay rate of ``v``.
        beta3 (float): decay rate of ``s``.
        final_lr (float): final (SGD) learning rate at ``lr == base_lr``.
        gamma (float): convergence speed of the bounds; 0 disables them.
        eps (float): term added to the denominator.
        weight_decay (float): weight decay coefficient.
        decoupled_weight_decay (bool): AdamW-style decay instead of an L2 term.
        maximize (bool): maximize the objective instead of minimizing it.
        stochastic_round (bool): without master copies, round bf16 results stochastically
            instead of to nearest. Default: ``False``
    """
    if not all(isinstance(t, torch.Tensor) for t in state_steps):
        raise RuntimeError(
            "AdaBalance expects state_steps to be a list of 0-dim tensors, as torch optimizers "
            "keep them"
        )
    if fused and foreach:
        raise RuntimeError("AdaBalance: `foreach` and `fused` cannot both be True; pick one")
    hyper = dict(
        amsbound=amsbound,
        has_complex=has_complex,
        lr=lr,
        base_lr=base_lr,
        beta1=beta1,
        beta2=beta2,
        beta3=beta3,
        final_lr=final_lr,
        gamma=gamma,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
        stochastic_round=stochastic_round,
    )
    tensor_lists = [params, grads, exp_avgs, exp_avg_sqs, exp_avg_lrs, max_exp_avg_sqs]
    tensor_lists += [state_steps, master_params]
    if fused:
        fusable = [fused_kernel_supports([p, g]) for p, g in zip(params, grads, strict=True)]
        if not all(fusable):
            # Single elements and non-contiguous tensors: the per-tensor path, same arithmetic.
            _single_tensor_adabalance(*_select(tensor_lists, [not f for f in fusable]), **hyper)
            tensor_lists = _select(tensor_lists, fusable)
        _fused_adabalance(*tensor_lists, **hyper)
        return
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    if foreach:
        _check_foreach_supported(params)
        _multi_tensor_adabalance(*tensor_lists, **hyper)
    else:
        _single_tensor_adabalance(*tensor_lists, **hyper)


def _select(tensor_lists: list, keep: list[bool]) -> list:
    """The entries of each parallel list where ``keep`` is true (empty and None lists stay)."""
    selected = []
    for tensors in tensor_lists:
        if not tensors:
            selected.append(tensors)
        else:
            selected.append([t for t, k in zip(tensors, keep, strict=True) if k])
    return selected
