"""Checks of a param group's options, each by its row of :data:`~.options.OPTIONS`.

Where torch checks (construction, ``add_param_group``, ``load_state_dict``) every option is
checked; before a step only those that enter the arithmetic, and only when they changed.
"""

from __future__ import annotations

from typing import Any

import torch

from .options import OPTIONS, OPTIONS_BY_NAME

__all__ = ["validate_before_step", "validate_hyperparameters", "validate_param_group"]

# What a step reads into its arithmetic (a Hyper), in the table's order: what a step can break.
_STEP_KEYS = tuple(option.name for option in OPTIONS if option.step)


def _check_key(group: dict[str, Any], key: str, tensors: bool) -> None:
    """Raise a ``ValueError`` if ``group[key]`` is invalid (an absent key is not checked)."""
    if key in group:
        OPTIONS_BY_NAME[key].check(group[key], tensors=tensors)


def validate_hyperparameters(group: dict[str, Any], *, tensors: bool = True) -> None:
    """Raise a ``ValueError`` naming the first invalid option of a param group.

    Args:
        group (dict): a param group (or the optimizer's defaults). Options it lacks are not
            checked; keys that are not options are ignored.
        tensors (bool, optional): also check values held in tensors (reads them: a device
            synchronisation for accelerator tensors). Default: ``True``
    """
    for option in OPTIONS:
        if option.name in group:
            option.check(group[option.name], tensors=tensors)


def validate_param_group(
    param_group: dict[str, Any], defaults: dict[str, Any], group_index: int
) -> None:
    """Check a param group's hyper-parameters (its own, else the defaults) before it is added.

    Args:
        param_group (dict): the group being added (``"params"`` and per-group options).
        defaults (dict): the optimizer's defaults, for the options the group does not set.
        group_index (int): the position the group will take, named in the error.

    Raises:
        ValueError: naming the group, the hyper-parameter and its value.
    """
    try:
        validate_hyperparameters({**defaults, **param_group})
    except ValueError as error:
        raise ValueError(f"AdaBalance param group {group_index}: {error}") from None


_UNSEEN = object()


def _snapshot(value: Any) -> Any:
    # Lists are copied, so that an element written in place (betas[0] = 1.0) is seen as a change.
    return tuple(value) if type(value) is list else value


def _unchanged(old: Any, new: Any) -> bool:
    """Whether ``new`` is the value ``old`` (of the same type), without reading any tensor."""
    if old is new:
        return True
    if type(new) is list:  # snapshots hold lists as tuples
        new = tuple(new)
    if type(old) is not type(new):  # True == 1, but an int flag is invalid
        return False
    if type(new) is tuple:
        return len(old) == len(new) and all(map(_unchanged, old, new))
    if isinstance(new, torch.Tensor):
        return False  # another tensor: not read here (see validate_before_step)
    return bool(old == new)  # nan != nan: a nan is found invalid again at every step


def validate_before_step(
    param_groups: list[dict[str, Any]], validated: list[list[Any]] | None = None
) -> None:
    """Check again, before a step updates anything, the options the step reads.

    Catches values written into ``param_groups`` after construction (a buggy scheduler setting
    ``group["lr"] = nan``, ``betas`` set to ``(1.0, 0.999)``, a string from a config file) in the
    options that enter the arithmetic (those with :class:`~.options.Hyper` fields). Only Python
    numbers are checked: a tensor ``lr`` is not read, so a step never synchronises.

    With ``validated``, only the values that differ from the ones last found valid are checked
    (``validated[i]`` holds group ``i``'s, updated here): the checks depend on the values alone,
    so a step whose groups nobody changed costs a comparison of each value, and a scheduler's
    new ``lr`` one check of it.

    Args:
        param_groups (list of dict): the optimizer's param groups.
        validated (list, optional): the optimizer's record of values found valid; ``None``
            checks everything. Default: ``None``

    Raises:
        ValueError: naming the group, the hyper-parameter and its value; no parameter and no
            state has been changed.
    """
    if validated is None:
        validated = []
    del validated[len(param_groups) :]  # one entry per group, unseen values until checked
    validated.extend([_UNSEEN] * len(_STEP_KEYS) for _ in range(len(param_groups) - len(validated)))
    for group_index, (group, record) in enumerate(zip(param_groups, validated, strict=True)):
        try:
            for position, key in enumerate(_STEP_KEYS):
                value = group.get(key, _UNSEEN)
                if not _unchanged(record[position], value):
                    _check_key(group, key, tensors=False)
                    record[position] = _snapshot(value)
        except ValueError as error:
            raise ValueError(
                f"AdaBalance.step: param group {group_index} holds an invalid value, set after "
                f"the optimizer was built (by a scheduler or by code that writes "
                f"optimizer.param_groups[{group_index}][...]); nothing was updated. {error}"
            ) from None
