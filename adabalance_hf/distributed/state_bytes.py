"""Bytes of optimizer state held by this process, whatever engine wraps the optimizer."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["local_optimizer", "optimizer_state_bytes"]


def local_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """Return the optimizer that holds this process's state under any engine wrapper.

    Unwraps accelerate's ``AcceleratedOptimizer`` (``.optimizer``), DeepSpeed's ZeRO optimizers
    (``.optimizer``) and ``ZeroRedundancyOptimizer`` (``.optim``, the local shard's optimizer).

    Args:
        optimizer (Any): the optimizer or a wrapper of it.

    Returns:
        torch.optim.Optimizer: the innermost optimizer.
    """
    from torch.distributed.optim import ZeroRedundancyOptimizer

    seen = set()
    while id(optimizer) not in seen:
        seen.add(id(optimizer))
        if isinstance(optimizer, ZeroRedundancyOptimizer):
            optimizer = optimizer.optim
        elif isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = optimizer.optimizer
        else:
            break
    return optimizer


def optimizer_state_bytes(optimizer: Any) -> int:
    """Sum the bytes of the state tensors this process holds (sharded state: the local shard).

    Counts every tensor in ``state`` (moments, ``exp_avg_lr``, master weights) except 0-dim ones
    (step counters). DTensor state counts its local shard.

    Args:
        optimizer (Any): the optimizer or a wrapper of it (see :func:`local_optimizer`).

    Returns:
        int: bytes of optimizer state in this process.
    """
    from torch.distributed.tensor import DTensor

    total = 0
    for state in local_optimizer(optimizer).state.values():
        for value in state.values():
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                continue
            local = value.to_local() if isinstance(value, DTensor) else value
            total += local.numel() * local.element_size()
    return total
