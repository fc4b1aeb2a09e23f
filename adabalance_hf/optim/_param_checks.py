"""Checks of the tensors AdaBalance is given: parameter lists, param groups and gradients.

Each check runs before anything changes: a bad parameter list before the optimizer exists, a bad
param group before it is added, and a bad gradient before the first parameter of the step moves.
The conventions are torch's (an empty parameter list, a non-leaf tensor and a parameter in two
groups are errors; a parameter that does not require grad and an empty param group are accepted),
with messages that name the group, the position and the fix. Beyond torch: a parameter twice in
one group (torch only warns, then steps it twice per step) and a group that mixes device types are
errors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._precision import LOW_PRECISION_DTYPES

__all__ = ["check_grads_before_step", "check_new_param_group", "check_param_list"]

_STEPPABLE_DTYPES = frozenset(
    {torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.complex128, torch.complex64}
)


def check_param_list(params: Any) -> list:
    """Return ``params`` as a list, or raise the error torch would raise with the fix named.

    Args:
        params (iterable): what the constructor was given.
    """
    if isinstance(params, Tensor):
        raise TypeError(
            f"AdaBalance expects an iterable of parameters or of param-group dicts, got a single "
            f"{torch.typename(params)}; wrap it in a list: AdaBalance([tensor])"
        )
    if isinstance(params, dict):
        raise TypeError(
            "AdaBalance expects an iterable of parameters or of param-group dicts, got one dict; "
            "wrap it in a list: AdaBalance([{'params': ..., 'lr': ...}])"
        )
    param_list = list(params)
    if not param_list:
        raise ValueError(
            "AdaBalance got an empty parameter list; pass the parameters to optimize, e.g. "
            "AdaBalance(model.parameters()). A generator such as model.parameters() can be "
            "consumed only once (pass list(model.parameters()) to use it twice), and a filter "
            "such as `if p.requires_grad` finds nothing in a fully frozen model."
        )
    return param_list


def _tensors_of(param_group: dict[str, Any], group_index: int) -> list:
    """Normalise ``param_group["params"]`` to a list, as torch does, and return its tensors."""
    if "params" not in param_group:
        raise ValueError(
            f"AdaBalance param group {group_index} has no 'params' key (it has "
            f"{sorted(param_group)}); pass {{'params': [...], <options>}}"
        )
    params = param_group["params"]
    if isinstance(params, Tensor):
        param_group["params"] = [params]
    elif not isinstance(params, set):  # torch rejects a set itself, naming the fix (a list)
        param_group["params"] = list(params)
    items = param_group["params"]
    return [item[1] if isinstance(item, tuple) and len(item) == 2 else item for item in items]


def check_new_param_group(
    param_group: Any, param_groups: list[dict[str, Any]], defaults: dict[str, Any]
) -> None:
    """Check the tensors of a param group before it is added to ``param_groups``.

    Normalises ``param_group["params"]`` to a list (as ``Optimizer.add_param_group`` does, so a
    generator is read once).

    Args:
        param_group (dict): the group being added.
        param_groups (list of dict): the optimizer's current groups.
        defaults (dict): the optimizer's defaults: with ``differentiable``, non-leaf tensors are
            allowed (as in torch); a ``fused`` group's tensors must be floating point.

    Raises:
        RuntimeError: a fused group holds a tensor that is not floating point.
        TypeError: the group is not a dict, or holds something that is not a tensor.
        ValueError: a non-leaf tensor, a tensor twice in the group or already in another
            group, or trainable tensors on different device types.
    """
    group_index = len(param_groups)
    if not isinstance(param_group, dict):
        raise TypeError(
            f"AdaBalance param group {group_index} must be a dict such as "
            f"{{'params': [...], 'lr': 1e-4}}, got {type(param_group).__name__}"
        )
    if isinstance(param_group.get("params"), set):
        return  # torch's own error names the fix (use a list: a set has no stable order)
    tensors = _tensors_of(param_group, group_index)
    where = f"param group {group_index}"
    differentiable = bool(defaults.get("differentiable", False))
    fused = param_group.get("fused", defaults.get("fused")) is True
    first_seen: dict[Tensor, int] = {}
    first_trainable: int | None = None
    for position, param in enumerate(tensors):
        if not isinstance(param, Tensor):
            raise TypeError(
                f"AdaBalance can only optimize tensors: parameter {position} of {where} is a "
                f"{type(param).__name__} ({param!r:.60}); pass model.parameters(), "
                f"model.named_parameters() or a list of tensors"
            )
        if fused and not param.is_floating_point():
            raise RuntimeError(
                f"AdaBalance(fused=True) needs floating-point parameters; parameter {position} "
                f"of {where} is {param.dtype}. Use foreach=True or fused=False."
            )
        if not differentiable and not (param.is_leaf or param.retains_grad):
            raise ValueError(
                f"AdaBalance can't optimize a non-leaf tensor: parameter {position} of {where} "
                f"(shape {tuple(param.shape)}) was computed from other tensors (e.g. "
                f"`w * 2` or `w.to(device)` of a tensor that requires grad). Optimize the leaf "
                f"itself: create it with requires_grad=True on its final device, or use "
                f"t.detach().requires_grad_()"
            )
        if param in first_seen:
            raise ValueError(
                f"AdaBalance: parameter {position} of {where} is the same tensor as parameter "
                f"{first_seen[param]} (shape {tuple(param.shape)}); it would be stepped twice "
                f"per step. Pass each tensor once: model.parameters() lists tied weights once, "
                f"or deduplicate with list(dict.fromkeys(params))"
            )
        first_seen[param] = position
        if param.requires_grad:
            if first_trainable is None:
                first_trainable = position
            elif param.device.type != tensors[first_trainable].device.type:
                raise ValueError(
                    f"AdaBalance {where} mixes devices: parameter {first_trainable} is on "
                    f"{tensors[first_trainable].device} and parameter {position} on "
                    f"{param.device}. Put the group's parameters on one device (move the model "
                    f"with model.to(device) before building the optimizer), or give the "
                    f"parameters of each device a param group of their own"
                )
    for other_index, other in enumerate(param_groups):
        for other_position, other_param in enumerate(other["params"]):
            if other_param in first_seen:
                raise ValueError(
                    f"AdaBalance: parameter {first_seen[other_param]} of {where} is already "
                    f"parameter {other_position} of param group {other_index}; a parameter may "
                    f"belong to one param group only. Remove it from one of them (when splitting "
                    f"a model into groups, check that the groups' filters do not overlap)"
                )


def _grad_problem(param: Tensor, grad: Tensor) -> str | None:
    """What is wrong with ``grad`` as the gradient of ``param``, or ``None``."""
    if grad.shape != param.shape:
        return (
            f"has shape {tuple(grad.shape)} but the parameter has shape {tuple(param.shape)}; "
            f"assign a gradient of the parameter's shape (was .data of the parameter or of its "
            f"gradient replaced?)"
        )
    if grad.device != param.device:
        return (
            f"is on {grad.device} but the parameter is on {param.device}; move it: "
            f"param.grad = param.grad.to(param.device)"
        )
    if not (param.is_floating_point() or param.is_complex()):
        return (
            f"belongs to a {param.dtype} parameter; AdaBalance optimizes floating-point (or "
            f"complex) tensors: convert the parameter or leave it out of the optimizer"
        )
    allowed = (param.dtype, torch.float32) if param.dtype in LOW_PRECISION_DTYPES else ()
    if grad.dtype != param.dtype and grad.dtype not in allowed:
        return (
            f"is {grad.dtype} but the parameter is {param.dtype}; AdaBalance needs the gradient "
            f"in the parameter's dtype (or float32 for a bf16/fp16 parameter): "
            f"param.grad = param.grad.to(param.dtype)"
        )
    return None


def check_grads_before_step(param_groups: list[dict[str, Any]]) -> None:
    """Check every gradient of every group before a step changes any parameter.

    About a microsecond per parameter (attribute reads, no device synchronisation).

    Args:
        param_groups (list of dict): the optimizer's param groups.

    Raises:
        RuntimeError: a sparse gradient, or a gradient whose shape, device or dtype does not
            fit its parameter (named by position and group); nothing has been updated.
    """
    for group_index, group in enumerate(param_groups):
        for position, param in enumerate(group["params"]):
            grad = param.grad
            if grad is None or (
                grad.layout is torch.strided
                and grad.dtype is param.dtype
                and grad.dtype in _STEPPABLE_DTYPES
                and grad.shape == param.shape
                and grad.device == param.device
            ):
                continue  # the common case, decided in about a microsecond
            if grad.layout != torch.strided:
                raise RuntimeError(
                    f"AdaBalance does not support sparse gradients: parameter {position} of "
                    f"param group {group_index} (shape {tuple(param.shape)}) has one "
                    f"({grad.layout}). Use a "
                    f"dense layer (e.g. nn.Embedding(..., sparse=False)) or "
                    f"torch.optim.SparseAdam for this parameter. Nothing was updated."
                )
            problem = _grad_problem(param, grad)
            if problem is not None:
                raise RuntimeError(
                    f"AdaBalance: the gradient of parameter {position} of param group "
                    f"{group_index} {problem}. Nothing was updated."
                )
