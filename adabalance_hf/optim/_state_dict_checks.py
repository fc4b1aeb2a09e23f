"""Checks that turn a mismatched optimizer state dict into a clear error before anything loads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["REQUIRED_STATE_KEYS", "check_state_dict"]

REQUIRED_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "exp_avg_lr")
_PER_ELEMENT_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_lr", "max_exp_avg_sq")


def check_state_dict(param_groups: list[dict[str, Any]], state_dict: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` if ``state_dict`` cannot be an AdaBalance state for these groups.

    Args:
        param_groups (list of dict): the param groups of the optimizer that loads.
        state_dict (Mapping): the state dict to load, as returned by ``state_dict()``.
    """
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        keys = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict)
        raise ValueError(
            f"AdaBalance.load_state_dict expects a dict with 'state' and 'param_groups' (as "
            f"returned by optimizer.state_dict()), got {keys}"
        )
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"AdaBalance.load_state_dict: the state dict has {len(saved_groups)} param groups, "
            f"this optimizer has {len(param_groups)}; build the optimizer with the same groups "
            f"as the one that saved it"
        )
    for group_index, (saved, group) in enumerate(zip(saved_groups, param_groups, strict=True)):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"AdaBalance.load_state_dict: param group {group_index} has "
                f"{len(saved['params'])} parameters in the state dict and "
                f"{len(group['params'])} in this optimizer; was it saved for another model?"
            )

    state = state_dict["state"]
    for group_index, (saved, group) in enumerate(zip(saved_groups, param_groups, strict=True)):
        saved_and_live = zip(saved["params"], group["params"], strict=True)
        for position, (param_id, param) in enumerate(saved_and_live):
            param_state = state.get(param_id)
            if not param_state:
                continue
            where = f"parameter {position} of param group {group_index} (state key {param_id!r})"
            missing = [key for key in REQUIRED_STATE_KEYS if key not in param_state]
            if missing:
                raise ValueError(
                    f"AdaBalance.load_state_dict: the state of {where} lacks {missing} and has "
                    f"{sorted(param_state)}: this is not an AdaBalance state dict (one from "
                    f"torch.optim.Adam, say). Load it into the optimizer class that saved it, "
                    f"or start AdaBalance from fresh state."
                )
            for key in _PER_ELEMENT_KEYS:
                value = param_state.get(key)
                if isinstance(value, torch.Tensor) and value.shape != param.shape:
                    raise ValueError(
                        f"AdaBalance.load_state_dict: state {key!r} of {where} has shape "
                        f"{tuple(value.shape)} but the parameter has shape "
                        f"{tuple(param.shape)}; the state dict was saved for another model "
                        f"or another parameter order"
                    )
