"""Diagnostics of AdaBalance's bounds in the Trainer's logs.

On each logging step the callback adds to the Trainer's logs:

* ``adabalance/lower_bound`` and ``adabalance/upper_bound``: the bounds that clipped the smoothed
  learning rate in the last optimizer step (of the first param group that has state, at its
  largest step count; ``upper_bound`` is ``inf`` when ``gamma == 0``);
* ``adabalance/frac_at_lower``, ``adabalance/frac_between`` and ``adabalance/frac_at_upper``: the
  fractions of all optimized elements whose smoothed rate ``state["exp_avg_lr"]`` sits at or
  below the lower bound, strictly between the bounds, or at or above the upper bound, each
  tensor judged with its own step count and its group's rate. Early in training most elements
  sit at the upper bound or between the bounds (adaptive, Adam-like); as the bounds close in on
  ``final_lr``, elements move to the bounds (SGD-like): this is the transition the paper is about;
* ``adabalance/nonfinite_steps_skipped``: how many optimizer steps ``skip_nonfinite_grads`` has
  skipped because a gradient held inf or nan (only when the option is on, or a step was skipped).

Cost: nothing on other steps except recording each group's ``lr`` after the optimizer step.
On a logging step, two elementwise comparisons and two counts over every ``exp_avg_lr`` tensor,
about the memory traffic of one reading of the optimizer's state, plus one host-device
synchronisation per device.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import DefaultFlowCallback

from ...optim import AdaBalance, decoded_state
from ...optim._step_scalars import step_scalars
from .checks import TrainerChecks, find_adabalance

__all__ = ["AdaBalanceDiagnosticsCallback", "adabalance_diagnostics", "add_diagnostics_callback"]

logger = logging.getLogger(__name__)

PREFIX = "adabalance/"


def _nonfinite_steps_skipped(optimizer: AdaBalance) -> int | None:
    """The skip count of ``skip_nonfinite_grads`` when it is on (or has counted), else None."""
    count = getattr(optimizer, "nonfinite_steps_skipped", None)  # absent in older versions
    if count is None:
        return None
    groups = optimizer.param_groups
    if count or any(group.get("skip_nonfinite_grads", False) for group in groups):
        return int(count)
    return None


def _as_float(value: float | Tensor) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def adabalance_diagnostics(
    optimizer: AdaBalance, step_lrs: list[float | Tensor] | None = None
) -> dict[str, float]:
    """Return the current bounds and the fractions of elements at each bound.

    Args:
        optimizer (AdaBalance): the optimizer (or a wrapper holding it in ``.optimizer``).
        step_lrs (list, optional): each param group's ``lr`` during the last step. A scheduler
            changes ``lr`` right after the step, so the current ``lr`` would give the bounds of
            the next step. Default: ``None`` (use the current ``lr``)

    Returns:
        dict: ``lower_bound``, ``upper_bound``, ``frac_at_lower``, ``frac_between`` and
        ``frac_at_upper`` (without the ``adabalance/`` prefix); empty before the first step.
        When both bounds are equal (``lr == 0``) an element counts as at the lower bound.
    """
    found = find_adabalance(optimizer)
    if found is None:
        raise TypeError(f"adabalance_diagnostics needs an AdaBalance optimizer, got {optimizer!r}")
    groups = found.param_groups
    if step_lrs is None or len(step_lrs) != len(groups):
        step_lrs = [group["lr"] for group in groups]
    bounds: tuple[float, float] | None = None
    counts: dict[torch.device, Tensor] = {}
    total = 0
    for group, lr in zip(groups, step_lrs, strict=True):
        beta1, beta2 = group["betas"]
        largest_step = 0.0
        for param in group["params"]:
            state = found.state.get(param)
            if not state or "exp_avg_lr" not in state or torch.is_complex(param):
                continue
            step = _as_float(state["step"])
            scalars = step_scalars(
                step,
                lr=_as_float(lr),
                base_lr=_as_float(group["base_lr"]),
                beta1=_as_float(beta1),
                beta2=_as_float(beta2),
                final_lr=_as_float(group["final_lr"]),
                gamma=_as_float(group["gamma"]),
            )
            rate = decoded_state(state, "exp_avg_lr")  # AdaBalance8bit: decode its codes
            at_lower = rate <= scalars.lower
            at_upper = (rate >= scalars.upper) & ~at_lower
            pair = torch.stack([at_lower.count_nonzero(), at_upper.count_nonzero()])
            counts[pair.device] = counts[pair.device] + pair if pair.device in counts else pair
            total += rate.numel()
            if step > largest_step:
                largest_step = step
                group_bounds = (scalars.lower, scalars.upper)
        if bounds is None and largest_step > 0:
            bounds = group_bounds
    if bounds is None or total == 0:
        return {}
    n_lower = n_upper = 0
    for pair in counts.values():
        low, up = pair.tolist()
        n_lower += low
        n_upper += up
    return {
        "lower_bound": bounds[0],
        "upper_bound": bounds[1],
        "frac_at_lower": n_lower / total,
        "frac_between": (total - n_lower - n_upper) / total,
        "frac_at_upper": n_upper / total,
    }


class AdaBalanceDiagnosticsCallback(TrainerChecks):
    """Add AdaBalance's bounds and the fractions of elements at them to the Trainer's logs.

    On by default in :class:`AdaBalanceTrainer`. With a plain ``Trainer`` pass it in
    ``callbacks=[...]`` (the values reach ``trainer.state.log_history``, the console and the
    callbacks after it) or call :func:`add_diagnostics_callback` (also reaches the reporting
    integrations such as TensorBoard, which otherwise run before it). It does nothing, apart
    from one info message, when the optimizer is not AdaBalance. See the module docstring for
    the keys and the cost. It runs :class:`TrainerChecks`' checks at train start too.
    """

    def __init__(self) -> None:
        super().__init__()
        self._step_lrs: list[float | Tensor] | None = None
        self._told_not_adabalance = False

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """Record each group's ``lr`` of the step just taken (before the scheduler changes it).

        Args:
            args (TrainingArguments): the training arguments.
            state (TrainerState): the Trainer's state.
            control (TrainerControl): the Trainer's control flags.
            optimizer (torch.optim.Optimizer, optional): the Trainer's (wrapped) optimizer.
            **kwargs: the other objects the Trainer passes to callbacks.
        """
        found = find_adabalance(optimizer)
        if found is not None:
            self._step_lrs = [
                group["lr"].clone() if isinstance(group["lr"], Tensor) else group["lr"]
                for group in found.param_groups
            ]

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """Add the diagnostics to the logs of a training logging step.

        Args:
            args (TrainingArguments): the training arguments.
            state (TrainerState): the Trainer's state.
            control (TrainerControl): the Trainer's control flags.
            logs (dict, optional): the values being logged; updated in place.
            optimizer (torch.optim.Optimizer, optional): the Trainer's (wrapped) optimizer.
            **kwargs: the other objects the Trainer passes to callbacks.
        """
        # Only the Trainer's periodic training logs carry "loss"; evaluation and the final
        # summary carry "eval_loss" / "train_loss".
        if logs is None or "loss" not in logs:
            return
        found = find_adabalance(optimizer)
        if found is None:
            if not self._told_not_adabalance:
                logger.info(
                    "AdaBalanceDiagnosticsCallback: the optimizer is %s, not AdaBalance; "
                    "no diagnostics are logged",
                    type(optimizer).__name__,
                )
                self._told_not_adabalance = True
            return
        values = {
            PREFIX + key: value
            for key, value in adabalance_diagnostics(found, self._step_lrs).items()
        }
        skipped = _nonfinite_steps_skipped(found)
        if skipped is not None:
            values[PREFIX + "nonfinite_steps_skipped"] = skipped
        logs.update(values)
        # Trainer.log appends a copy of the logs to log_history before calling the callbacks.
        history = state.log_history
        if history and history[-1].get("step") == state.global_step and "loss" in history[-1]:
            history[-1].update(values)


def add_diagnostics_callback(
    trainer: Trainer, callback: AdaBalanceDiagnosticsCallback | None = None
) -> AdaBalanceDiagnosticsCallback:
    """Put a diagnostics callback right after the Trainer's ``DefaultFlowCallback``.

    There, its values reach every later callback, including reporting integrations
    (TensorBoard, W&B, ...) and the console printer. An existing diagnostics callback is moved
    there (or replaced by ``callback``), never duplicated.

    Args:
        trainer (Trainer): the Trainer.
        callback (AdaBalanceDiagnosticsCallback, optional): the callback to install.
            Default: the trainer's existing one, else a new one.

    Returns:
        AdaBalanceDiagnosticsCallback: the installed callback.
    """
    callbacks = trainer.callback_handler.callbacks
    existing = [cb for cb in callbacks if isinstance(cb, AdaBalanceDiagnosticsCallback)]
    for cb in existing:
        callbacks.remove(cb)
    if callback is None:
        callback = existing[0] if existing else AdaBalanceDiagnosticsCallback()
    position = next(
        (i + 1 for i, cb in enumerate(callbacks) if isinstance(cb, DefaultFlowCallback)), 0
    )
    callbacks.insert(position, callback)
    return callback
