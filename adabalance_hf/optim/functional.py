"""Functional AdaBalance: one entry point that dispatches to the per-tensor or foreach path."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach, _foreach_supported_types

from ._flat_aliases import FlatAliases
from ._fused import _fused_adabalance, fused_kernel_supports
from ._multi_tensor import _multi_tensor_adabalance
from ._single_tensor import _single_tensor_adabalance
from .options import Hyper

__all__ = ["StepTensors", "adabalance"]


class StepTensors(NamedTuple):
    """The parallel tensor lists of one step, named as :func:`adabalance`'s arguments.

    Entry ``i`` of each list belongs to ``params[i]``; ``max_exp_avg_sqs`` is empty unless
    ``amsbound``. Pass them on by name (``**tensors._asdict()``), never by position.
    """

    params: list[Tensor]
    grads: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    exp_avg_lrs: list[Tensor]
    max_exp_avg_sqs: list[Tensor]
    state_steps: list[Tensor]

    def select(self, keep: list[bool]) -> StepTensors:
        """The entries where ``keep`` is true, from every list (empty lists stay empty)."""
        return StepTensors(*(_select(tensors, keep) for tensors in self))


def _select(tensors: list[Tensor], keep: list[bool]) -> list[Tensor]:
    if not tensors:
        return tensors
    return [t for t, k in zip(tensors, keep, strict=True) if k]


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


def _unscale_on_host(
    grads: list[Tensor], grad_scale: Tensor | None, found_inf: Tensor | None
) -> bool:
    """GradScaler's work for the paths without a fused kernel: whether the step may proceed.

    Reads ``found_inf`` on the host (a device synchronisation for accelerator tensors) and
    unscales the gradients in place, one pass over them.
    """
    if found_inf is not None and found_inf.item() != 0:
        return False
    if grad_scale is not None and grads:
        torch._foreach_mul_(grads, 1.0 / grad_scale.item())
    return True


def adabalance(
    *,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_lrs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    master_params: list[Tensor] | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    has_complex: bool = False,
    fused_aliases: FlatAliases | None = None,
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
    hyper-parameter. Every argument is keyword-only, the tensor lists included, so that two lists
    can never be swapped by their order. The lists are parallel: entry ``i`` of each belongs to
    ``params[i]``.

    Args:
        params (list of Tensor): parameters to update in place.
        grads (list of Tensor): their (dense) gradients.
        exp_avgs (list of Tensor): first moments ``m``.
        exp_avg_sqs (list of Tensor): second moments ``v``.
        exp_avg_lrs (list of Tensor): smoothed learning rates ``s``.
        max_exp_avg_sqs (list of Tensor): running maxima of ``v`` (empty unless ``amsbound``).
        state_steps (list of Tensor): per-parameter step counts (0-dim CPU tensors),
            incremented here.
        master_params (list of Tensor, optional): fp32 master copies of low-precision
            parameters; the arithmetic updates them and the result is written into ``params``.
            Default: ``None``
        foreach (bool, optional): use the ``torch._foreach_*`` path; ``None`` picks it where
            torch would (CUDA tensors). Default: ``None``
        fused (bool, optional): use the compiled fused kernel (contiguous tensors of at least
            two elements; others take the per-tensor path). Default: ``None``
        grad_scale (Tensor, optional): ``torch.amp.GradScaler``'s scale, by which the gradients
            are divided. The fused kernel divides them itself (and stores the unscaled
            gradients); the other paths, and the fused path's per-tensor fallback, unscale
            them in place first, reading the scale on the host. Default: ``None``
        found_inf (Tensor, optional): GradScaler's flag; where it is non-zero the step changes
            nothing (no parameter, state, step count or gradient). The fused kernel reads it on
            the device; the other paths read it on the host. Default: ``None``
        has_complex (bool): whether any parameter is complex. Default: ``False``
        fused_aliases (FlatAliases, optional): the fused path's 1-D aliases of the parameters,
            states and master copies, kept from one step to the next (:class:`AdaBalance`
            passes its own); ``None`` makes them afresh. Default: ``None``
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
    hyper = Hyper(
        lr=lr,
        base_lr=base_lr,
        beta1=beta1,
        beta2=beta2,
        beta3=beta3,
        final_lr=final_lr,
        gamma=gamma,
        eps=eps,
        weight_decay=weight_decay,
        amsbound=amsbound,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
        stochastic_round=stochastic_round,
    )
    paths = dict(hyper=hyper, has_complex=has_complex)  # what every path takes besides tensors
    tensors = StepTensors(
        params=params,
        grads=grads,
        exp_avgs=exp_avgs,
        exp_avg_sqs=exp_avg_sqs,
        exp_avg_lrs=exp_avg_lrs,
        max_exp_avg_sqs=max_exp_avg_sqs,
        state_steps=state_steps,
    )
    if fused:
        fusable = [fused_kernel_supports([p, g]) for p, g in zip(params, grads, strict=True)]
        if not all(fusable):
            # Single elements and non-contiguous tensors: the per-tensor path, same arithmetic.
            rest = [not f for f in fusable]
            if not _unscale_on_host(tensors.select(rest).grads, grad_scale, found_inf):
                return
            found_inf = None  # known to be 0 now; the kernel still unscales its gradients
            _single_tensor_adabalance(
                **tensors.select(rest)._asdict(),
                master_params=None if master_params is None else _select(master_params, rest),
                **paths,
            )
            tensors = tensors.select(fusable)
            if master_params is not None:
                master_params = _select(master_params, fusable)
        _fused_adabalance(
            **tensors._asdict(),
            master_params=master_params,
            grad_scale=grad_scale,
            found_inf=found_inf,
            aliases=fused_aliases,
            **paths,
        )
        return
    if not _unscale_on_host(grads, grad_scale, found_inf):
        return
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    if foreach:
        _check_foreach_supported(params)
        _multi_tensor_adabalance(**tensors._asdict(), master_params=master_params, **paths)
    else:
        _single_tensor_adabalance(**tensors._asdict(), master_params=master_params, **paths)
