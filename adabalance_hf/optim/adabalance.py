"""The :class:`AdaBalance` optimizer class: validates, gathers tensors and dispatches."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    ParamsT,
    _get_scalar_dtype,
    _use_grad_for_differentiable,
)

from ._state_dict_checks import check_state_dict
from ._validation import validate_hyperparameters
from .functional import adabalance

__all__ = ["AdaBalance"]

# Options added after the reference code, with the values that reproduce it.
_OPTION_DEFAULTS = {
    "amsbound": False,
    "decoupled_weight_decay": False,
    "maximize": False,
    "foreach": None,
    "differentiable": False,
}


def _as_float(value: float | Tensor) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


class AdaBalance(Optimizer):
    r"""Implements the AdaBalance algorithm.

    AdaBalance smooths Adam's per-element step size with an exponential moving average (AdaMod)
    and clips the smoothed rate between bounds that converge to a final SGD rate (AdaBound):

    .. math::
        \begin{aligned}
            & m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
              v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
            & \eta_t = \frac{\mathrm{lr}/(1 - \beta_1^t)}{\sqrt{v_t/(1 - \beta_2^t)} + \epsilon}
              \quad (\text{amsbound: } \sqrt{\max_{\tau \le t} v_\tau} + \epsilon) \\
            & s_t = \beta_3 s_{t-1} + (1 - \beta_3) \eta_t, \qquad
              \alpha = \mathrm{final\_lr} \cdot \mathrm{lr} / \mathrm{base\_lr} \\
            & \theta_t = \theta_{t-1} - \mathrm{clamp}\Big(s_t,\
              \alpha\big(1 - \tfrac{1}{\gamma t + 1}\big),\
              \alpha\big(1 + \tfrac{1}{\gamma t}\big)\Big)\, m_t
        \end{aligned}

    With the default options every path follows the reference code exactly, quirks included: the
    ``amsbound`` branch does not bias-correct :math:`v`, :math:`s` is not bias-corrected, and
    :math:`m` enters the update without its own bias correction.

    ``base_lr`` is the group's ``lr`` when the group was created. It is stored in each param
    group under ``"base_lr"``, so it survives ``state_dict()``/``load_state_dict()``, deep copies
    and pickling, and any scheduler that changes ``lr`` scales both bounds with it. A step with
    ``lr == 0`` moves no parameter. A group created with ``lr=0`` has no reference rate: its
    bounds then converge to ``final_lr`` unscaled whenever ``lr > 0`` (set the group's
    ``"base_lr"`` to the peak rate to let them follow the schedule).

    Args:
        params (iterable): iterable of parameters or named parameters to optimize, or of dicts
            defining parameter groups.
        lr (float, Tensor, optional): learning rate. Default: ``1e-3``
        betas (tuple[float, float], optional): decay rates of the running averages of the
            gradient and of its square. Default: ``(0.9, 0.999)``
        beta3 (float, optional): decay rate of the running average of the step size (AdaMod's
            smoothing). Default: ``0.999``
        final_lr (float, optional): the SGD learning rate both bounds converge to, for
            ``lr == base_lr``. Default: ``0.1``
        gamma (float, optional): convergence speed of the bounds: after ``1/gamma`` steps the
            lower bound is half of ``final_lr`` and the upper bound twice it. ``0`` disables the
            bounds (lower bound 0, no upper bound). Default: ``1e-3``
        eps (float, optional): term added to the denominator for numerical stability.
            Default: ``1e-8``
        weight_decay (float, optional): weight decay coefficient; an L2 term added to the
            gradient unless ``decoupled_weight_decay``. Default: ``0``
        amsbound (bool, optional): use the running maximum of the second moment (without its
            bias correction, as in the reference). Default: ``False``
        decoupled_weight_decay (bool, optional): apply weight decay AdamW-style,
            ``p *= 1 - lr * weight_decay`` with the group's current ``lr``. Default: ``False``
        maximize (bool, optional): maximize the objective instead of minimizing it.
            Default: ``False``
        foreach (bool, optional): use the multi-tensor ``torch._foreach_*`` implementation.
            ``None`` picks it where torch would (all parameters on CUDA). Default: ``None``

    Example:
        >>> # xdoctest: +SKIP
        >>> optimizer = AdaBalance(model.parameters(), lr=1e-3, final_lr=0.1)
        >>> optimizer.zero_grad()
        >>> loss_fn(model(input), target).backward()
        >>> optimizer.step()
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float = 0.999,
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsbound: bool = False,
        *,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
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
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            differentiable=False,
        )
        validate_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        r"""Add a param group, validating its hyper-parameters and recording its ``base_lr``.

        Args:
            param_group (dict): the parameters under ``"params"`` and any per-group options.
                A ``"base_lr"`` given here is kept; otherwise it is the group's ``lr``.
        """
        if isinstance(param_group, dict):
            validate_hyperparameters({**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("base_lr", _as_float(group["lr"]))
        if group["base_lr"] == 0.0 and group["final_lr"] != 0.0:
            warnings.warn(
                f"AdaBalance param group {len(self.param_groups) - 1} starts with lr=0, so its "
                f"bounds cannot follow the lr schedule and converge to final_lr="
                f"{group['final_lr']} unscaled; set the group's 'base_lr' to its peak rate "
                f"to scale them",
                UserWarning,
                stacklevel=3,
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for option, default in _OPTION_DEFAULTS.items():
                group.setdefault(option, default)
            # A state dict of the reference code has no base_lr: a scheduler's initial_lr is the
            # best record of the construction-time rate, else the current lr.
            group.setdefault("base_lr", _as_float(group.get("initial_lr", group["lr"])))
            for param in group["params"]:
                param_state = self.state.get(param, {})
                if len(param_state) != 0 and not torch.is_tensor(param_state["step"]):
                    param_state["step"] = torch.tensor(
                        float(param_state["step"]), dtype=_get_scalar_dtype()
                    )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        r"""Load the optimizer state, after checking that it is an AdaBalance state that fits.

        Args:
            state_dict (dict): optimizer state, as returned by :meth:`state_dict`.

        Raises:
            ValueError: if the state dict has other groups or sizes, lacks AdaBalance's state
                keys (a state dict of another optimizer), or holds tensors of other shapes.
        """
        check_state_dict(self.param_groups, state_dict)
        super().load_state_dict(state_dict)

    def _init_group(
        self,
        group_index: int,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        exp_avg_lrs: list[Tensor],
        max_exp_avg_sqs: list[Tensor],
        state_steps: list[Tensor],
    ) -> bool:
        has_complex = False
        for position, param in enumerate(group["params"]):
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError(
                    f"AdaBalance does not support sparse gradients: parameter {position} of "
                    f"param group {group_index} (shape {tuple(param.shape)}) has one. Use a "
                    f"dense layer (e.g. nn.Embedding(..., sparse=False)) or "
                    f"torch.optim.SparseAdam for this parameter."
                )
            has_complex |= torch.is_complex(param)
            params.append(param)
            grads.append(param.grad)

            state = self.state[param]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_lr"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if group["amsbound"] and "max_exp_avg_sq" not in state:
                # Also reached when amsbound is switched on mid-run: the maximum starts now.
                state["max_exp_avg_sq"] = torch.zeros_like(
                    param, memory_format=torch.preserve_format
                )

            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            exp_avg_lrs.append(state["exp_avg_lr"])
            if group["amsbound"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            state_steps.append(state["step"])
        return has_complex

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        r"""Perform a single optimization step.

        Args:
            closure (Callable, optional): a closure that reevaluates the model and returns the
                loss; it runs with gradients enabled.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group_index, group in enumerate(self.param_groups):
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            exp_avg_lrs: list[Tensor] = []
            max_exp_avg_sqs: list[Tensor] = []
            state_steps: list[Tensor] = []
            has_complex = self._init_group(
                group_index,
                group,
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                exp_avg_lrs,
                max_exp_avg_sqs,
                state_steps,
            )
            if not params:
                continue
            beta1, beta2 = group["betas"]
            adabalance(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                exp_avg_lrs,
                max_exp_avg_sqs,
                state_steps,
                foreach=group["foreach"],
                has_complex=has_complex,
                amsbound=group["amsbound"],
                lr=_as_float(group["lr"]),
                base_lr=_as_float(group["base_lr"]),
                beta1=_as_float(beta1),
                beta2=_as_float(beta2),
                beta3=_as_float(group["beta3"]),
                final_lr=_as_float(group["final_lr"]),
                gamma=_as_float(group["gamma"]),
                eps=_as_float(group["eps"]),
                weight_decay=_as_float(group["weight_decay"]),
                decoupled_weight_decay=group["decoupled_weight_decay"],
                maximize=group["maximize"],
            )
        return loss
