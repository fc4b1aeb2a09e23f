"""Skipping a step whose gradients hold inf or nan (AdaBalance's ``skip_nonfinite_grads``).

The check is one pass over all gradients of all param groups before anything is updated: the
2-norm of each gradient (``torch._foreach_norm``, per device and dtype), stacked, then one
``isfinite`` reduction and one host synchronisation. A sharded setup (ZeroRedundancyOptimizer,
FSDP2's DTensor shards, DeepSpeed) gives each rank only part of the gradients, so when a process
group is initialised the rank-local flag is all-reduced (MAX) over the default group and every
rank skips together.

Skips are counted in each param group under :data:`SKIP_COUNT_KEY` (the same value in every
group), so the count travels with ``state_dict()``, DCP, deep copies and pickles.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "OPTION",
    "SKIP_COUNT_KEY",
    "found_nonfinite",
    "restore_nonfinite_keys",
    "skip_count",
    "skip_nonfinite_step",
]

OPTION = "skip_nonfinite_grads"
SKIP_COUNT_KEY = "nonfinite_steps_skipped"

logger = logging.getLogger("adabalance_hf")


def _local(tensor: Tensor) -> Tensor:
    # A DTensor gradient (FSDP2) is checked on this rank's shard; the flag is reduced below.
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def _reduce_device(local: torch.device) -> torch.device:
    """The device on which the default process group can all-reduce the flag."""
    config = str(dist.get_backend_config())  # e.g. "cpu:gloo,cuda:nccl" or "cuda:nccl"
    device_types = {part.split(":")[0].strip() for part in config.split(",") if ":" in part}
    if local.type in device_types:
        return local
    if "cpu" in device_types:
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None:
        return local
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _reduced(flag: Tensor, distributed: bool) -> bool:
    """``flag != 0`` on any rank (one host synchronisation, and one all-reduce if distributed)."""
    if distributed:
        flag = flag.to(_reduce_device(flag.device))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() != 0


def found_nonfinite(grads: Iterable[Tensor]) -> tuple[bool, int | None]:
    """Whether any gradient, on any rank, holds inf or nan.

    Each gradient's 2-norm is computed with ``torch._foreach_norm`` (per device and dtype): it is
    finite only if every element is, since inf and nan survive a sum of squares. The converse
    can fail (squares of huge finite values overflow), so a non-finite norm is confirmed element
    by element; that rare path costs a second synchronisation (and all-reduce).

    Args:
        grads (iterable of Tensor): this rank's gradients (plain tensors or DTensors); sparse
            and empty ones are not checked.

    Returns:
        tuple: ``(found, first)``: ``found`` is ``True`` on every rank when any rank's
        gradients are non-finite; ``first`` is the position in ``grads`` of this rank's first
        non-finite gradient (``None`` when this rank's gradients are finite).
    """
    buckets: dict[tuple[torch.device, torch.dtype], list[tuple[int, Tensor]]] = {}
    for position, grad in enumerate(grads):
        local = _local(grad)
        if local.layout != torch.strided or local.numel() == 0:
            continue
        if local.is_complex():
            local = torch.view_as_real(local)
        buckets.setdefault((local.device, local.dtype), []).append((position, local))
    distributed = _distributed()
    if not buckets and not distributed:
        return False, None
    # fp16's range is too small for the norms of finite gradients: they are computed in fp32.
    norms = {
        key: torch.stack(
            torch._foreach_norm(
                [t for _, t in entries],
                2.0,
                dtype=torch.float32 if key[1] == torch.float16 else None,
            )
        )
        for key, entries in buckets.items()
    }
    suspect = [~values.isfinite().all() for values in norms.values()]
    if suspect:
        device = suspect[0].device
        flag = torch.stack([s.to(device) for s in suspect]).any().to(torch.float32)
    else:
        flag = torch.zeros((), dtype=torch.float32)
    if not _reduced(flag, distributed):  # the normal path ends here
        return False, None
    first = None
    for key, entries in buckets.items():
        for index in (~norms[key].isfinite()).nonzero().flatten().tolist():
            position, tensor = entries[index]
            if not bool(tensor.isfinite().all()):
                first = position if first is None else min(first, position)
    found = _reduced(torch.tensor(float(first is not None)), distributed)
    return found, first


def skip_count(param_groups: list[dict[str, Any]]) -> int:
    """The number of steps skipped so far (the largest count of any param group)."""
    return max((int(group.get(SKIP_COUNT_KEY, 0)) for group in param_groups), default=0)


def restore_nonfinite_keys(defaults: dict[str, Any], param_groups: list[dict[str, Any]]) -> None:
    """After loading or unpickling: one skip count in every group and in the defaults.

    The count is the largest of the groups' (0 for a state dict saved before the option
    existed); the defaults keep it too, so that a group added later starts with it. An old
    pickle's defaults also get the option, off.
    """
    defaults.setdefault(OPTION, False)
    count = skip_count(param_groups)
    defaults[SKIP_COUNT_KEY] = count
    for group in param_groups:
        group[SKIP_COUNT_KEY] = count


def _steps_taken(optimizer: torch.optim.Optimizer) -> int:
    steps = [
        float(state["step"])
        for state in optimizer.state.values()
        if isinstance(state, dict) and "step" in state
    ]
    return int(max(steps, default=0.0))


def skip_nonfinite_step(optimizer: torch.optim.Optimizer) -> bool:
    """Return ``True`` (having counted and logged the skip) if this step must change nothing.

    Does nothing and returns ``False`` unless some param group has ``skip_nonfinite_grads``
    on. Otherwise checks every gradient of every group (one scalar all-reduce per call when a
    process group with more than one rank is initialised: every rank must call ``step()``).

    Args:
        optimizer (torch.optim.Optimizer): the AdaBalance optimizer about to step.
    """
    groups = optimizer.param_groups
    if not any(group.get(OPTION, False) for group in groups):
        return False
    located = [
        (group_index, position, param.grad)
        for group_index, group in enumerate(groups)
        for position, param in enumerate(group["params"])
        if param.grad is not None
    ]
    found, first = found_nonfinite(grad for _, _, grad in located)
    if not found:
        return False
    count = skip_count(groups) + 1
    optimizer.defaults[SKIP_COUNT_KEY] = count
    for group in groups:
        group[SKIP_COUNT_KEY] = count
    if first is None:
        where = "on another rank (this rank's gradients are finite)"
    else:
        group_index, position, _ = located[first]
        where = f"first in parameter {position} of param group {group_index} on this rank"
    logger.warning(
        "AdaBalance skipped an optimizer step: a gradient holds inf or nan (%s). No parameter "
        "or optimizer state changed; the parameters have taken %d steps and %d non-finite "
        "step(s) have been skipped so far. To find the offending batch, log the loss of every "
        "step (the skipped step's loss is usually inf or nan) and re-run that batch under "
        "torch.autograd.detect_anomaly().",
        where,
        _steps_taken(optimizer),
        count,
    )
    return True
