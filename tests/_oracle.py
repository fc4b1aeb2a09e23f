"""A float64 re-implementation of ``docs/algorithm.md``: the test oracle.

Written from the spec's pseudo-code, line by line, with none of the package's code: it is slow
and plain on purpose. Hyper-parameters are passed in on every step by the test, so the oracle
never reads them from the optimizer under test; only ``base_lr`` is the oracle's own record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

_ORACLE_DTYPE = torch.float64


@dataclass
class OracleTensorState:
    param: torch.Tensor
    step: int = 0
    m: torch.Tensor | None = None
    v: torch.Tensor | None = None
    s: torch.Tensor | None = None
    v_max: torch.Tensor | None = None


@dataclass
class OracleGroup:
    base_lr: float
    tensors: list[OracleTensorState] = field(default_factory=list)


class OracleAdaBalance:
    """AdaBalance in float64, one group per ``add_group`` call."""

    def __init__(self) -> None:
        self.groups: list[OracleGroup] = []

    def add_group(self, params: list[torch.Tensor], lr: float) -> None:
        """Track copies of ``params`` in float64; ``lr`` is the group's rate at creation."""
        tensors = [OracleTensorState(param=p.detach().to(_ORACLE_DTYPE).clone()) for p in params]
        self.groups.append(OracleGroup(base_lr=float(lr), tensors=tensors))

    def params(self, group: int) -> list[torch.Tensor]:
        return [t.param for t in self.groups[group].tensors]

    def step(self, group: int, grads: list[torch.Tensor | None], hyper: dict) -> None:
        """One step of one group. ``None`` gradients skip their tensor (no state change)."""
        lr = hyper["lr"]
        b1, b2 = hyper["betas"]
        beta3 = hyper["beta3"]
        final_lr = hyper["final_lr"]
        gamma = hyper["gamma"]
        eps = hyper["eps"]
        weight_decay = hyper["weight_decay"]
        base_lr = self.groups[group].base_lr
        for state, grad in zip(self.groups[group].tensors, grads, strict=True):
            if grad is None:
                continue
            p = state.param
            if state.m is None:
                state.m = torch.zeros_like(p)
                state.v = torch.zeros_like(p)
                state.s = torch.zeros_like(p)
                state.v_max = torch.zeros_like(p)
            state.step += 1
            t = state.step

            g = grad.to(_ORACLE_DTYPE)
            if hyper.get("maximize", False):
                g = -g
            if weight_decay != 0:
                if hyper.get("decoupled_weight_decay", False):
                    p = p * (1 - lr * weight_decay)
                else:
                    g = g + weight_decay * p
            state.m = b1 * state.m + (1 - b1) * g
            state.v = b2 * state.v + (1 - b2) * g * g
            bc1 = 1 - b1**t
            bc2 = 1 - b2**t
            if hyper.get("amsbound", False):
                state.v_max = torch.maximum(state.v_max, state.v)
                denom = torch.sqrt(state.v_max) + eps
            else:
                denom = torch.sqrt(state.v / bc2) + eps
            eta = (lr / bc1) / denom
            state.s = beta3 * state.s + (1 - beta3) * eta

            if lr == 0:
                fl = 0.0
            elif base_lr == 0:
                fl = final_lr
            else:
                fl = final_lr * lr / base_lr
            if gamma == 0:
                lower, upper = 0.0, math.inf
            else:
                lower = fl * (1 - 1 / (gamma * t + 1))
                upper = fl * (1 + 1 / (gamma * t))
            state.param = p - torch.clamp(state.s, lower, upper) * state.m


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max|expected|``: relative error in the infinity norm."""
    actual = actual.detach().to(_ORACLE_DTYPE)
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    return diff / scale if scale > 0 else diff
