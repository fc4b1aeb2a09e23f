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

from . import options
from ._blockwise_state import dequantize_state, is_quantized_state
from ._flat_aliases import FlatAliases
from ._nonfinite import SKIP_COUNT_KEY, restore_nonfinite_keys, skip_count, skip_nonfinite_step
from ._param_checks import check_grads_before_step, check_new_param_group, check_param_list
from ._precision import LOW_PRECISION_DTYPES, compute_dtype
from ._state_dict_checks import load_between_hooks
from ._validation import validate_before_step, validate_hyperparameters, validate_param_group
from .functional import StepTensors, adabalance

__all__ = ["AdaBalance"]


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
        foreach (bool, optional): use the multi-tensor ``torch._foreach_*`` implementation,
            in chunks of at most 10% of the parameters' elements. ``None`` picks it where torch
            would (all parameters on CUDA). Default: ``None``
        fused (bool, optional): use ``torch.compile``-generated kernels, eight tensors per call
            (CPU and CUDA; the first step compiles). Default: ``None`` (not fused)
        master_weights (bool, optional): for bf16/fp16 parameters, keep an fp32 master copy in
            the state (``"master_param"``), do the arithmetic on it and write the rounded result
            into the parameter. State (m, v, s) of such parameters is fp32 either way.
            Default: ``True``
        bf16_stochastic_round (bool, optional): without master weights, round bf16 results
            stochastically instead of to nearest, so that small updates survive in expectation.
            Default: ``False``
        skip_nonfinite_grads (bool, optional): before updating anything, check every gradient
            of every param group; if any holds inf or nan, skip the whole step (no parameter,
            master weight, moment or step count changes), count it in
            :attr:`nonfinite_steps_skipped` and log a warning on the ``"adabalance_hf"`` logger,
            as ``torch.amp.GradScaler`` skips such steps. On in any param group, it covers the
            whole step. When a process group of more than one rank is initialised, the check
            all-reduces one scalar per step over the default group, so that ranks holding shards
            of the gradients (ZeroRedundancyOptimizer, FSDP2, DeepSpeed) skip together: every
            rank must call ``step()``. The check costs one host synchronisation per step.
            ``load_state_dict`` keeps the loading optimizer's setting (turn it on to resume a
            run that died on a non-finite batch); steps that ``GradScaler`` skips are not
            counted (its loss-scale calibration skips them routinely). Default: ``False``

    Under ``torch.amp.GradScaler`` the optimizer takes the scaler's ``grad_scale`` and
    ``found_inf`` itself, as torch's fused Adam does. With ``fused=True`` in every group the
    kernel divides the gradients by the scale and, where ``found_inf`` is set, writes the old
    values back: neither tensor is read on the host (on an accelerator, correcting the CPU step
    counters of a skipped step costs one copy of ``found_inf`` after the kernels are queued).
    The other paths, and the fused path's single-element or non-contiguous parameters, read
    ``found_inf`` on the host (one synchronisation) and unscale the gradients in place first.
    Either way a skipped step changes no parameter, moment, step count or gradient, and a
    step taken leaves the unscaled gradients in ``.grad``; a skipped fused step creates missing
    state (zero moments at step 0) and, with ``bf16_stochastic_round``, draws its random bits.

    Example:
        >>> # xdoctest: +SKIP
        >>> optimizer = AdaBalance(model.parameters(), lr=1e-3, final_lr=0.1)
        >>> optimizer.zero_grad()
        >>> loss_fn(model(input), target).backward()
        >>> optimizer.step()

    It does not clip gradients: with the fine-tuning settings (``beta3`` 0.9-0.99, ``gamma=1e-4``)
    clip them before ``step()``, as the Trainer does by default (a tiny GPT-2 at lr 3e-3 diverged
    without clipping on 2-3 of 8 seeds; see ``benchmarks/results/stability_envelope.md``):

        >>> # xdoctest: +SKIP
        >>> torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        >>> optimizer.step()
    """

    # torch.amp.GradScaler hands this optimizer `grad_scale` and `found_inf` instead of
    # unscaling itself (see the class docstring), which also lets fp16 parameters train under it.
    _step_supports_amp_scaling = True

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
        fused: bool | None = None,
        master_weights: bool = True,
        bf16_stochastic_round: bool = False,
        skip_nonfinite_grads: bool = False,
    ) -> None:
        # The signature is explicit (for IDEs and inspect.signature); options.OPTIONS holds the
        # same names and defaults, checked at import (check_signature below).
        defaults = {**options.group_defaults(locals()), **self._subclass_defaults()}
        validate_hyperparameters(defaults)
        defaults[SKIP_COUNT_KEY] = 0  # a count, not an option: see nonfinite_steps_skipped
        if fused and foreach:
            raise RuntimeError("AdaBalance: `foreach` and `fused` cannot both be True; pick one")
        super().__init__(check_param_list(params), defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        r"""Add a param group, validating its hyper-parameters and recording its ``base_lr``.

        Args:
            param_group (dict): the parameters under ``"params"`` and any per-group options.
                A ``"base_lr"`` given here is kept; otherwise it is the group's ``lr``.
        """
        check_new_param_group(param_group, self.param_groups, self.defaults)
        validate_param_group(param_group, self.defaults, len(self.param_groups))
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("base_lr", options.as_float(group["lr"]))
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
            for option, default in options.UPGRADE_DEFAULTS.items():  # options added since
                group.setdefault(option, default)
            # A state dict of the reference code has no base_lr: a scheduler's initial_lr is the
            # best record of the construction-time rate, else the current lr.
            group.setdefault("base_lr", options.as_float(group.get("initial_lr", group["lr"])))
            for param in group["params"]:
                param_state = self.state.get(param, {})
                if len(param_state) != 0 and not torch.is_tensor(param_state["step"]):
                    param_state["step"] = torch.tensor(
                        float(param_state["step"]), dtype=_get_scalar_dtype()
                    )
        restore_nonfinite_keys(self.defaults, self.param_groups)

    @property
    def nonfinite_steps_skipped(self) -> int:
        """Steps skipped by ``skip_nonfinite_grads`` because a gradient held inf or nan.

        Stored in every param group under ``"nonfinite_steps_skipped"``, so it survives
        ``state_dict()``/``load_state_dict()``, DCP, deep copies and pickling (0 for a state dict
        saved before the option existed).
        """
        return skip_count(self.param_groups)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        r"""Load the optimizer state, after checking that it is an AdaBalance state that fits.

        Hooks registered with :meth:`register_load_state_dict_pre_hook` run first, as in torch,
        and the checks apply to the state dict they return; hooks registered with
        :meth:`register_load_state_dict_post_hook` see the final state (fp32 state and master
        copies of bf16/fp16 parameters, steps cast). State of another dtype or device is cast.

        Args:
            state_dict (dict): optimizer state, as returned by :meth:`state_dict`.

        Raises:
            StateDictMismatchError: if a group or a parameter's state lacks AdaBalance's keys (a
                state dict of another optimizer); a subclass of ``ValueError``.
            ValueError: if the state dict has other groups or sizes, holds an invalid
                hyper-parameter, a bad ``step``, tensors of other shapes, on the meta device or
                holding NaN. After either error the optimizer is unchanged.
        """
        load_between_hooks(
            self,
            state_dict,
            super().load_state_dict,
            kept_group_keys=[key for key in options.KEPT_ON_LOAD if key in self.defaults],
            convert=self._convert_loaded_state,
        )
        self.__dict__.pop("_flat_aliases_kept", None)  # they hold the replaced state

    def _convert_loaded_state(self) -> None:
        """After loading: decode 8-bit state (saved by ``AdaBalance8bit``) to fp32 state."""
        for group in self.param_groups:
            group.pop("block_size", None)
            for param in group["params"]:
                state = self.state.get(param)
                if state and is_quantized_state(state):
                    dequantize_state(state, param, compute_dtype(param.dtype))

    def _init_group(
        self, group: dict[str, Any]
    ) -> tuple[StepTensors, list[Tensor], list[bool], bool]:
        """Create missing state and gather the group's tensors that have a gradient.

        Steps the parameters :meth:`_fp32_state_params` returns (all of them here).

        Returns:
            tuple: ``(tensors, master_params, low_precision, has_complex)``: the parallel lists
            of the step, the fp32 master copies of the bf16/fp16 parameters among them (in
            their order; empty without master weights), which of them are bf16/fp16, and
            whether any is complex.
        """
        tensors = StepTensors(*([] for _ in StepTensors._fields))  # empty lists
        master_params: list[Tensor] = []
        low_precision: list[bool] = []
        has_complex = False
        for param in self._fp32_state_params(group):
            has_complex |= torch.is_complex(param)
            low = param.dtype in LOW_PRECISION_DTYPES
            state = self.state[param]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state_dtype = torch.float32 if low else param.dtype
                for key in ("exp_avg", "exp_avg_sq", "exp_avg_lr"):
                    state[key] = torch.zeros_like(
                        param, dtype=state_dtype, memory_format=torch.preserve_format
                    )
            if group["amsbound"] and "max_exp_avg_sq" not in state:
                # Also reached when amsbound is switched on mid-run: the maximum starts now.
                state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
            if low and group["master_weights"] and "master_param" not in state:
                # Also reached after loading a state dict saved without master weights.
                state["master_param"] = param.detach().to(torch.float32, copy=True)

            tensors.params.append(param)
            tensors.grads.append(param.grad)
            tensors.exp_avgs.append(state["exp_avg"])
            tensors.exp_avg_sqs.append(state["exp_avg_sq"])
            tensors.exp_avg_lrs.append(state["exp_avg_lr"])
            if group["amsbound"]:
                tensors.max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            tensors.state_steps.append(state["step"])
            if low and group["master_weights"]:
                master_params.append(state["master_param"])
            low_precision.append(low)
        return tensors, master_params, low_precision, has_complex

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

        # Set by torch.amp.GradScaler.step (see _step_supports_amp_scaling), which has checked
        # every gradient for inf/nan: skip_nonfinite_grads need not check them again.
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        scaler_checked = found_inf is not None
        if found_inf is not None and not self._kernel_reads_found_inf():
            # Without the fused kernel the flag is read on the host (one synchronisation), and
            # a step with inf/nan gradients returns before anything, state included, is made.
            if found_inf.item() != 0:
                return loss
            found_inf = None
        # Before any group steps (and before the non-finite check reads the gradients): every
        # group's hyper-parameters and gradients, so a bad one fails with nothing modified.
        validate_before_step(self.param_groups, self._validated_hyperparameters())
        check_grads_before_step(self.param_groups)
        if not scaler_checked and skip_nonfinite_step(self):  # inf/nan in any gradient
            return loss

        for group in self.param_groups:
            self._step_group(group, grad_scale=grad_scale, found_inf=found_inf)
        self._flat_aliases().end_step()
        return loss

    def _step_group(
        self, group: dict[str, Any], *, grad_scale: Tensor | None, found_inf: Tensor | None
    ) -> None:
        """Step one param group (``grad_scale``/``found_inf``: GradScaler's, for the kernel)."""
        tensors, master_params, low_precision, has_complex = self._init_group(group)
        if not tensors.params:
            return
        arguments = dict(
            foreach=group["foreach"],
            fused=group["fused"],
            grad_scale=grad_scale,
            found_inf=found_inf,
            has_complex=has_complex,
            fused_aliases=self._flat_aliases(),
            **options.hyper_of(group)._asdict(),
        )
        # Parameters whose dtype is their compute dtype, then bf16/fp16 ones (fp32 state).
        native = [not low for low in low_precision]
        parts: list[tuple[StepTensors, list[Tensor] | None]] = []
        if any(native):
            parts.append((tensors if all(native) else tensors.select(native), None))
        if any(low_precision):
            masters = master_params if group["master_weights"] else None
            parts.append((tensors.select(low_precision), masters))
        for part, masters in parts:
            adabalance(
                params=part.params,
                grads=part.grads,
                exp_avgs=part.exp_avgs,
                exp_avg_sqs=part.exp_avg_sqs,
                exp_avg_lrs=part.exp_avg_lrs,
                max_exp_avg_sqs=part.max_exp_avg_sqs,
                state_steps=part.state_steps,
                master_params=masters,
                **arguments,
            )

    def _subclass_defaults(self) -> dict[str, Any]:
        """Options a subclass adds to the defaults (and so to every param group)."""
        return {}

    def _fp32_state_params(self, group: dict[str, Any]) -> list[Tensor]:
        """The group's parameters with a gradient whose state :meth:`_init_group` keeps."""
        return [param for param in group["params"] if param.grad is not None]

    def _kernel_reads_found_inf(self) -> bool:
        """Whether every group's kernel takes GradScaler's ``found_inf`` on the device."""
        return all(group["fused"] for group in self.param_groups)

    def _validated_hyperparameters(self) -> list[list[Any]]:
        """The values of each group last found valid (see ``validate_before_step``).

        Kept on the instance only: a copy, an unpickled optimizer or a loaded state dict starts
        with none, and its first step validates everything once.
        """
        return self.__dict__.setdefault("_hyperparameters_found_valid", [])

    def _flat_aliases(self) -> FlatAliases:
        """The fused kernel's 1-D aliases of this optimizer's tensors, kept between steps.

        Kept on the instance only, like :meth:`_validated_hyperparameters`.
        """
        aliases = self.__dict__.get("_flat_aliases_kept")
        if aliases is None:
            aliases = self.__dict__["_flat_aliases_kept"] = FlatAliases()
        return aliases


options.check_signature(AdaBalance.__init__)
