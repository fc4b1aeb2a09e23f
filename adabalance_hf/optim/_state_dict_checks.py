"""Checks that turn a mismatched optimizer state dict into a clear error before anything loads.

``AdaBalance.load_state_dict`` loads through :func:`load_between_hooks`: the checks run after the
user's ``load_state_dict`` pre-hooks and before anything loads, so a state dict that fails leaves
the optimizer exactly as it was. What is accepted, and why:

* state tensors of another floating dtype or on another device are cast to what the optimizer
  needs (torch casts to the parameter's dtype and device; AdaBalance keeps fp32 state for
  bf16/fp16 parameters), but a state tensor on the ``meta`` device holds no data: an error;
* ``step`` may be a Python number (older versions) or a one-element tensor, and must be a finite
  whole number ``>= 0``;
* NaN in a state tensor is an error: the next step would turn the parameter into NaN. Infinity
  is accepted: ``exp_avg_lr`` legitimately reaches it with ``eps=0`` and a zero gradient.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.optim.optimizer import Optimizer, _get_scalar_dtype

from ._blockwise_state import (
    STATE_KEYS,
    is_quantized_state,
    saved_codes,
    scale_group,
    state_codec,
)
from ._precision import full_precision_state
from ._validation import validate_hyperparameters
from .options import REFERENCE_KEYS

__all__ = [
    "REQUIRED_GROUP_KEYS",
    "REQUIRED_STATE_KEYS",
    "StateDictMismatchError",
    "cast_loaded_steps",
    "check_state_dict",
    "load_between_hooks",
]

REQUIRED_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "exp_avg_lr")
REQUIRED_GROUP_KEYS = REFERENCE_KEYS  # the reference code's options: in every AdaBalance group
_PER_ELEMENT_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_lr", "max_exp_avg_sq", "master_param")
_PREFIX = "AdaBalance.load_state_dict"
_NOT_OURS = (
    "this is not an AdaBalance state dict (one of torch.optim.Adam, AdamW or SGD, say). Load it "
    "into the optimizer class that saved it, or start AdaBalance from fresh state (do not call "
    "load_state_dict)"
)
_CORRUPT = (
    "Load an earlier checkpoint, or start the optimizer from fresh state (do not call "
    "load_state_dict; the model weights can still be loaded)"
)


class StateDictMismatchError(ValueError):
    """The state dict given to ``AdaBalance.load_state_dict`` was not saved by AdaBalance.

    Raised when a param group or a parameter's state lacks AdaBalance's keys: typically the
    state dict of ``torch.optim.Adam``, ``AdamW`` or ``SGD`` (a run resumed after switching
    optimizers). A subclass of ``ValueError``, so code that catches that still works; other
    problems (another model, a damaged or diverged checkpoint) raise a plain ``ValueError``.
    """


def load_between_hooks(
    optimizer: Optimizer,
    state_dict: Any,
    load: Callable[[Any], None],
    kept_group_keys: Sequence[str] = (),
    convert: Callable[[], None] | None = None,
) -> None:
    """Call ``load(state_dict)``, torch's ``Optimizer.load_state_dict``, with AdaBalance's checks.

    Torch's ``load_state_dict`` runs the registered pre-hooks first (each may return the state
    dict to load instead), then loads, casting state to each parameter's dtype, then runs the
    post-hooks. For this call only, a pre-hook registered last checks the state dict the user's
    pre-hooks produced (:func:`check_state_dict`) and copies the fp32 state of bf16/fp16
    parameters; a post-hook registered first puts that state back, casts the steps
    (:func:`cast_loaded_steps`) and restores the loading optimizer's ``kept_group_keys``. So the
    user's pre-hooks run before any check, and the user's post-hooks see the final state.

    This relies only on the public ``register_load_state_dict_pre_hook`` /
    ``register_load_state_dict_post_hook`` (``prepend=True``) and their documented order, no
    private attribute (checked against torch 2.13's ``Optimizer.load_state_dict``).

    Args:
        optimizer (Optimizer): the optimizer that loads.
        state_dict (Any): the state dict passed to ``load_state_dict``.
        load (Callable): ``Optimizer.load_state_dict`` bound to ``optimizer``.
        kept_group_keys (sequence of str, optional): group options the loading optimizer keeps.
            Default: ``()``
        convert (Callable, optional): called after loading, before the user's post-hooks, to
            bring the loaded state to the optimizer's layout (8-bit codes or fp32).
            Default: ``None``
    """
    if not isinstance(state_dict, Mapping):
        check_state_dict(optimizer.param_groups, state_dict)  # raises: not a state dict at all
    kept = [{key: group[key] for key in kept_group_keys} for group in optimizer.param_groups]
    fp32_state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def check(_: Optimizer, final: dict[str, Any]) -> None:
        check_state_dict(optimizer.param_groups, final, optimizer.defaults)
        # torch casts state to the parameter's dtype: keep fp32 state of bf16/fp16 parameters
        # and the 8-bit codes.
        fp32_state.update(full_precision_state(optimizer.param_groups, final))
        for param, codes in saved_codes(optimizer.param_groups, final).items():  # cast too
            fp32_state.setdefault(param, {}).update(codes)

    def fix_up(_: Optimizer) -> None:
        for param, entries in fp32_state.items():
            optimizer.state[param].update(entries)
        cast_loaded_steps(optimizer.param_groups, optimizer.state)
        for group, values in zip(optimizer.param_groups, kept, strict=True):
            group.update(values)
        if convert is not None:
            convert()

    # Public API only (no torch private attribute): torch 2.13 runs pre-hooks in registration
    # order, ours last, and post-hooks after loading, ours first (prepend=True).
    pre_hook = optimizer.register_load_state_dict_pre_hook(check)
    post_hook = optimizer.register_load_state_dict_post_hook(fix_up, prepend=True)
    try:
        load(state_dict)
    finally:
        pre_hook.remove()
        post_hook.remove()


def check_state_dict(
    param_groups: list[dict[str, Any]],
    state_dict: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Raise a ``ValueError`` if ``state_dict`` cannot be an AdaBalance state for these groups.

    A :class:`StateDictMismatchError` if it lacks AdaBalance's group or state keys.

    Args:
        param_groups (list of dict): the param groups of the optimizer that loads.
        state_dict (Mapping): the state dict to load, as returned by ``state_dict()``.
        defaults (Mapping, optional): the loading optimizer's defaults, used for the options a
            saved group lacks (state dicts of older versions) when checking its hyper-parameters.
            Default: ``None`` (hyper-parameters are not checked)
    """
    saved_groups = _check_layout(state_dict)
    _check_groups(param_groups, saved_groups, defaults)
    state = state_dict["state"]
    for group_index, (saved, group) in enumerate(zip(saved_groups, param_groups, strict=True)):
        saved_and_live = zip(saved["params"], group["params"], strict=True)
        for position, (param_id, param) in enumerate(saved_and_live):
            param_state = state.get(param_id)
            if not param_state:
                continue
            where = f"parameter {position} of param group {group_index} (state key {param_id!r})"
            _check_param_state(param_state, param, where)


def cast_loaded_steps(param_groups: list[dict[str, Any]], state: Mapping[Any, Any]) -> None:
    """After loading: make every ``step`` a CPU 0-dim float tensor, as fresh state has it.

    A loaded step may be an int tensor, a one-element tensor of another shape, or (torch's
    load policy for ``fused`` groups) a tensor on the parameter's device; the foreach path takes
    only CPU float32/float64 step tensors.

    Args:
        param_groups (list of dict): the param groups of the optimizer that loaded.
        state (Mapping): its state, parameter -> dict.
    """
    for group in param_groups:
        for param in group["params"]:
            param_state = state.get(param)
            if not param_state or "step" not in param_state:
                continue
            step = param_state["step"]
            if (
                isinstance(step, torch.Tensor)
                and step.dim() == 0
                and step.device.type == "cpu"
                and step.dtype in (torch.float32, torch.float64)
            ):
                continue
            value = float(step.item()) if isinstance(step, torch.Tensor) else float(step)
            param_state["step"] = torch.tensor(value, dtype=_get_scalar_dtype())


def _check_layout(state_dict: Any) -> list[Mapping[str, Any]]:
    """The top level: a mapping with a ``state`` mapping and a list of group mappings."""
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        keys = sorted(map(str, state_dict)) if isinstance(state_dict, Mapping) else type(state_dict)
        raise ValueError(
            f"{_PREFIX} expects a dict with 'state' and 'param_groups' (as returned by "
            f"optimizer.state_dict()), got {keys}; if the checkpoint holds more (a model, a "
            f"scheduler), pass its optimizer entry, e.g. checkpoint['optimizer']"
        )
    if not isinstance(state_dict["state"], Mapping):
        raise ValueError(
            f"{_PREFIX}: 'state' must be a dict of parameter id -> state, got "
            f"{type(state_dict['state']).__name__}; the state dict is damaged"
        )
    saved_groups = state_dict["param_groups"]
    if isinstance(saved_groups, (str, bytes)) or not isinstance(saved_groups, Sequence):
        raise ValueError(
            f"{_PREFIX}: 'param_groups' must be a list of dicts, got "
            f"{type(saved_groups).__name__}; the state dict is damaged"
        )
    for index, saved in enumerate(saved_groups):
        if not isinstance(saved, Mapping) or "params" not in saved:
            found = sorted(saved) if isinstance(saved, Mapping) else type(saved).__name__
            raise ValueError(
                f"{_PREFIX}: param group {index} of the state dict has no 'params' list (found "
                f"{found}); the state dict is damaged or was not made by optimizer.state_dict()"
            )
    return list(saved_groups)


def _check_groups(
    param_groups: list[dict[str, Any]],
    saved_groups: list[Mapping[str, Any]],
    defaults: Mapping[str, Any] | None,
) -> None:
    """Same group layout; every saved group is an AdaBalance group with valid values."""
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"{_PREFIX}: the state dict has {len(saved_groups)} param groups, this optimizer "
            f"has {len(param_groups)}; build the optimizer with the same groups as the one that "
            f"saved it"
        )
    for group_index, (saved, group) in enumerate(zip(saved_groups, param_groups, strict=True)):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"{_PREFIX}: param group {group_index} has {len(saved['params'])} parameters in "
                f"the state dict and {len(group['params'])} in this optimizer; was it saved for "
                f"another model, or with other param groups?"
            )
        missing = [key for key in REQUIRED_GROUP_KEYS if key not in saved]
        if missing:
            present = sorted(key for key in saved if key != "params")
            raise StateDictMismatchError(
                f"{_PREFIX}: param group {group_index} of the state dict lacks {missing} and "
                f"has {present}: {_NOT_OURS}"
            )
        if defaults is not None:
            merged = {**defaults, **{k: v for k, v in saved.items() if k != "params"}}
            try:
                validate_hyperparameters(merged)
            except ValueError as error:
                raise ValueError(
                    f"{_PREFIX}: param group {group_index} of the state dict: {error}. Correct "
                    f"state_dict['param_groups'][{group_index}] before loading it"
                ) from None


def _check_param_state(param_state: Any, param: torch.Tensor, where: str) -> None:
    if not isinstance(param_state, Mapping):
        raise ValueError(
            f"{_PREFIX}: the state of {where} is a {type(param_state).__name__}, not a dict; "
            f"the state dict is damaged"
        )
    missing = [key for key in REQUIRED_STATE_KEYS if key not in param_state]
    if missing:
        raise StateDictMismatchError(
            f"{_PREFIX}: the state of {where} lacks {missing} and has {sorted(param_state)}: "
            f"{_NOT_OURS}"
        )
    _check_step(param_state["step"], where)
    quantized = is_quantized_state(param_state)
    for key in _PER_ELEMENT_KEYS:
        if key not in param_state:
            continue
        if quantized and key in STATE_KEYS:
            _check_codes(param_state, key, param, where)
        else:
            _check_state_tensor(param_state[key], key, param, where)


def _check_codes(param_state: Mapping[str, Any], key: str, param: torch.Tensor, where: str) -> None:
    """Low-bit codes (AdaBalance8bit, AdaBalance4bit): their dtype and shape, their scales'."""
    codes, scale = param_state[key], param_state.get(key + "_scale")
    if not isinstance(codes, torch.Tensor) or not isinstance(scale, torch.Tensor):
        found = type(codes if not isinstance(codes, torch.Tensor) else scale).__name__
        raise ValueError(
            f"{_PREFIX}: state {key!r} of {where} holds a {found} where low-bit state has "
            f"tensors of codes and of scales. The state dict is damaged"
        )
    _check_not_meta(codes, key, param, where)
    _check_not_meta(scale, key + "_scale", param, where)
    codec = state_codec(param_state, key)
    if codes.dtype != codec.dtype:
        raise ValueError(
            f"{_PREFIX}: state {key!r} of {where} is {codes.dtype}; the state has {codec.bits}-bit "
            f"scales, so its codes must be {codec.dtype}. The state dict is damaged"
        )
    lead, last = tuple(param.shape[:-1]), param.shape[-1] if param.dim() else 0
    scale_blocks = scale.shape[-1] - codec.row_columns if scale.dim() else 0
    # A scale may serve several blocks (AdaBalance4bit's v); codes_shape below then checks that
    # the codes hold exactly that many blocks per scale.
    group = scale_group(codes, scale, codec) if scale.dim() else 1
    blocks = scale_blocks * group
    block_size = last // blocks if blocks > 0 and last % blocks == 0 else 0
    wrong_8bit_shape = codec.bits == 8 and codes.shape != param.shape
    if tuple(codes.shape[: len(lead)]) != lead or wrong_8bit_shape:
        expected = tuple(param.shape) if codec.bits == 8 else (*lead, "blocks", "block_size // 2")
        raise ValueError(
            f"{_PREFIX}: state {key!r} of {where} has shape {tuple(codes.shape)} but the "
            f"parameter has shape {tuple(param.shape)} (codes of shape {expected}); the state "
            f"dict was saved for another model or another parameter order"
        )
    one_byte = codec.scale_dtype == torch.uint8
    blocks_fit = (
        block_size > 0
        and (scale.dtype == torch.uint8 if one_byte else scale.is_floating_point())
        and scale.dim() == param.dim()
        and tuple(scale.shape[:-1]) == lead
        and tuple(codes.shape) == codec.codes_shape(tuple(param.shape), block_size)
    )
    if not blocks_fit:
        kind, columns = (
            ("uint8", f"{last} // block_size // scale_group + 1")
            if one_byte
            else ("floating point", f"{last} // block_size")
        )
        raise ValueError(
            f"{_PREFIX}: state {key + '_scale'!r} of {where} is {scale.dtype} of shape "
            f"{tuple(scale.shape)}; for codes of shape {tuple(codes.shape)} it must be {kind} "
            f"of shape (*leading, {columns}). The state dict is damaged"
        )
    if not one_byte:  # for NaN (uint8 scales hold none): shapes and devices are checked above
        _check_state_tensor(scale, key + "_scale", scale, where)


def _check_step(step: Any, where: str) -> None:
    value: float | None = None
    if isinstance(step, torch.Tensor):
        if step.numel() == 1 and step.device.type == "meta":
            raise ValueError(
                f"{_PREFIX}: 'step' of {where} is a tensor on the meta device, which holds no "
                f"value; the checkpoint was saved from an optimizer without real state. "
                f"{_CORRUPT}"
            )
        if step.numel() == 1 and not (step.is_complex() or step.dtype == torch.bool):
            value = float(step.detach().cpu().item())
    elif isinstance(step, numbers.Real) and not isinstance(step, bool):
        value = float(step)
    if value is None or not math.isfinite(value) or value < 0 or not value.is_integer():
        raise ValueError(
            f"{_PREFIX}: 'step' of {where} is {step!r}; it must be a whole number >= 0 (a "
            f"Python int or a one-element tensor: the count of steps this parameter has taken). "
            f"{_CORRUPT}"
        )


def _check_not_meta(value: torch.Tensor, key: str, param: torch.Tensor, where: str) -> None:
    if value.device.type == "meta" and param.device.type != "meta":
        raise ValueError(
            f"{_PREFIX}: state {key!r} of {where} is on the meta device, which holds no data, "
            f"and cannot be copied to the parameter's device {param.device}; the checkpoint "
            f"was saved from an optimizer whose state was never materialised. {_CORRUPT}"
        )


def _check_state_tensor(value: Any, key: str, param: torch.Tensor, where: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{_PREFIX}: state {key!r} of {where} is a {type(value).__name__}, not a tensor; "
            f"the state dict is damaged or is not an AdaBalance state dict"
        )
    if value.shape != param.shape:
        raise ValueError(
            f"{_PREFIX}: state {key!r} of {where} has shape {tuple(value.shape)} but the "
            f"parameter has shape {tuple(param.shape)}; the state dict was saved for another "
            f"model or another parameter order"
        )
    _check_not_meta(value, key, param, where)
    if not (value.is_floating_point() or value.is_complex()):
        raise ValueError(
            f"{_PREFIX}: state {key!r} of {where} is {value.dtype}; AdaBalance state is "
            f"floating point. The state dict is damaged or is not an AdaBalance state dict"
        )
    if value.is_complex() != param.is_complex():
        kind = "complex" if value.is_complex() else "real"
        raise ValueError(
            f"{_PREFIX}: state {key!r} of {where} is {kind} ({value.dtype}) but the parameter "
            f"is {param.dtype}; the state dict was saved for another model"
        )
    if value.device.type != "meta":
        local = value.to_local() if hasattr(value, "to_local") else value
        if bool(torch.isnan(local).any()):
            nan_count = int(torch.isnan(local).sum())
            raise ValueError(
                f"{_PREFIX}: state {key!r} of {where} holds {nan_count} NaN value(s) of "
                f"{local.numel()}; the next step would make the parameter NaN (the run had "
                f"probably diverged when the checkpoint was saved). {_CORRUPT}"
            )
