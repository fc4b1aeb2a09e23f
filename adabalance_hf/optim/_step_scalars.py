"""The per-tensor scalars of one AdaBalance step: bias corrections and the learning-rate bounds.

Every execution path (per-tensor, multi-tensor, fused) takes its scalars from here, so the bound
schedule of the paper is written once; :class:`KernelScalars` names the fused kernel's vector.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from .options import Hyper

__all__ = [
    "HYPER",
    "KernelScalars",
    "KernelScalarsCache",
    "StepScalars",
    "final_rate",
    "kernel_scalars",
    "step_scalars",
    "step_scalars_of",
]


class StepScalars(NamedTuple):
    """Scalars of one step of one tensor at step count ``t``.

    Attributes:
        step_size (float): ``lr / (1 - beta1 ** t)``, Adam's step size with the first-moment bias
            correction folded in.
        bias_correction2_sqrt (float): ``sqrt(1 - beta2 ** t)``.
        lower (float): lower bound of the smoothed learning rate.
        upper (float): upper bound of the smoothed learning rate (``inf`` when ``gamma == 0``).
    """

    step_size: float
    bias_correction2_sqrt: float
    lower: float
    upper: float


def final_rate(lr: float, base_lr: float, final_lr: float) -> float:
    """Return the rate both bounds converge to: ``final_lr * lr / base_lr``.

    The bounds follow any learning-rate schedule through the ratio ``lr / base_lr``. Two edge
    cases have a defined meaning instead of a division by zero:

    * ``lr == 0``: the final rate is 0, so both bounds are 0 and the step moves no parameter.
    * ``base_lr == 0`` (the group was created with ``lr=0``): there is no reference rate to scale
      by, so the final rate is ``final_lr`` unscaled while ``lr > 0``.

    Args:
        lr (float): the group's current learning rate.
        base_lr (float): the group's learning rate when it was created.
        final_lr (float): the final (SGD) learning rate for ``lr == base_lr``.
    """
    if lr == 0.0:
        return 0.0
    if base_lr == 0.0:
        return final_lr
    return final_lr * lr / base_lr


def step_scalars(
    step: float,
    *,
    lr: float,
    base_lr: float,
    beta1: float,
    beta2: float,
    final_lr: float,
    gamma: float,
) -> StepScalars:
    """Compute the scalars of step ``step`` (counted from 1) for one tensor.

    Args:
        step (float): the tensor's step count after this step's increment.
        lr (float): the group's current learning rate.
        base_lr (float): the group's learning rate when it was created.
        beta1 (float): decay rate of the first moment.
        beta2 (float): decay rate of the second moment.
        final_lr (float): the final (SGD) learning rate for ``lr == base_lr``.
        gamma (float): convergence speed of the bounds; 0 disables them.
    """
    rate = final_rate(lr, base_lr, final_lr)
    if gamma == 0.0:
        lower, upper = 0.0, math.inf
    else:
        lower = rate * (1.0 - 1.0 / (gamma * step + 1.0))
        upper = rate * (1.0 + 1.0 / (gamma * step))
    return StepScalars(
        step_size=lr / (1.0 - beta1**step),
        bias_correction2_sqrt=math.sqrt(1.0 - beta2**step),
        lower=lower,
        upper=upper,
    )


def step_scalars_of(step: float, hyper: Hyper) -> StepScalars:
    """:func:`step_scalars` with a group's hyper-parameters (``options.hyper_of``).

    Args:
        step (float): the tensor's step count after this step's increment.
        hyper (Hyper): the group's hyper-parameters.
    """
    return step_scalars(
        step,
        lr=hyper.lr,
        base_lr=hyper.base_lr,
        beta1=hyper.beta1,
        beta2=hyper.beta2,
        final_lr=hyper.final_lr,
        gamma=hyper.gamma,
    )


class KernelScalars(NamedTuple):
    """The hyper-parameter vector of one kernel call; the field order is the vector's layout.

    Complements such as ``1 - beta2`` are computed in float64 on the host: ``1 - float32(0.999)``
    would be off by 1e-5 relative.

    Attributes:
        eta_scale (float): ``(1 - beta3) * lr / (1 - beta1 ** t)``: the smoothed rate's increment
            is ``eta_scale / denom``.
        bias_correction2_sqrt (float): ``sqrt(1 - beta2 ** t)`` (unused with amsbound).
        lower (float): lower bound of the smoothed rate.
        upper (float): upper bound of the smoothed rate.
        one_minus_beta1 (float): the weight of ``g`` in ``m``.
        beta2 (float): decay rate of ``v``.
        one_minus_beta2 (float): the weight of ``g * g`` in ``v``.
        beta3 (float): decay rate of ``s``.
        eps (float): term added to the denominator.
        l2 (float): coefficient of the L2 term added to the gradient (0 if decoupled).
        decay (float): factor of the decoupled weight decay, ``1 - lr * weight_decay`` (else 1).
        grad_sign (float): ``-1`` to maximize, else ``1``.
    """

    eta_scale: float
    bias_correction2_sqrt: float
    lower: float
    upper: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    beta3: float
    eps: float
    l2: float
    decay: float
    grad_sign: float


# Each field's position in the vector, read by name in the kernel: HYPER.beta2 is beta2's index.
HYPER = KernelScalars(*range(len(KernelScalars._fields)))


def kernel_scalars(step: float, hyper: Hyper) -> KernelScalars:
    """The kernel's hyper-parameters for tensors at step count ``step`` (after its increment).

    Args:
        step (float): the tensors' step count after this step's increment.
        hyper (Hyper): the group's hyper-parameters (``options.hyper_of``).
    """
    s = step_scalars_of(step, hyper)
    decoupled = hyper.decoupled_weight_decay
    return KernelScalars(
        eta_scale=(1 - hyper.beta3) * s.step_size,
        bias_correction2_sqrt=s.bias_correction2_sqrt,
        lower=s.lower,
        upper=s.upper,
        one_minus_beta1=1 - hyper.beta1,
        beta2=hyper.beta2,
        one_minus_beta2=1 - hyper.beta2,
        beta3=hyper.beta3,
        eps=hyper.denominator_eps,
        l2=hyper.weight_decay if not decoupled else 0.0,
        decay=1 - hyper.lr * hyper.weight_decay if decoupled else 1.0,
        grad_sign=-1.0 if hyper.maximize else 1.0,
    )


class KernelScalarsCache:
    """The kernel's hyper-parameter vectors of one step, made once per step count, device and
    dtype (the tensors of a group usually share one step count, so one vector).

    Args:
        hyper (Hyper): the group's hyper-parameters (``options.hyper_of``).
    """

    def __init__(self, hyper: Hyper) -> None:
        self._hyper = hyper
        self._vectors: dict[tuple[float, torch.device, torch.dtype], torch.Tensor] = {}

    def vector(self, step: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The vector for tensors at step count ``step`` (after its increment)."""
        key = (step, device, dtype)
        if key not in self._vectors:
            scalars = kernel_scalars(step, self._hyper)
            self._vectors[key] = torch.tensor(scalars, dtype=dtype, device=device)
        return self._vectors[key]
