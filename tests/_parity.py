"""A randomized training scenario run side by side by AdaBalance and the float64 oracle.

The scenario exercises what the spec's "parity" requires: two param groups with different
hyper-parameters, a third group added mid-run with ``add_param_group``, a learning-rate change
mid-run, tensors that get no gradient on some steps, and gradients that depend on the parameters
(a noisy quadratic pull towards a target). The oracle is fed exactly the gradients the optimizer
under test saw, in float64, so the comparison measures the optimizer's arithmetic alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from _oracle import OracleAdaBalance, relative_error

from adabalance_hf import AdaBalance

GROUP_SHAPES = [[(5, 3), (4,)], [(2, 3, 2)], [(6,), (1,)]]
# Group 1 overrides hyper-parameters; group 2 joins later with its own lr.
GROUP_OVERRIDES: list[dict[str, Any]] = [
    {},
    {"lr": 2e-3, "beta3": 0.99, "final_lr": 0.05, "gamma": 1e-2},
    {"lr": 5e-3, "betas": (0.8, 0.99)},
]
LATE_GROUP_STEP = 100
LR_CHANGE_STEP = 150
LR_CHANGE_FACTOR = 0.3


def _no_grad_this_step(step: int, tensor_index: int) -> bool:
    return (step + 3 * tensor_index) % 7 == 0


def run_parity(
    config: dict[str, Any],
    dtype: torch.dtype,
    steps: int = 300,
    make_optimizer: Callable[..., torch.optim.Optimizer] = AdaBalance,
    seed: int = 0,
    compare_master: bool = False,
) -> dict[str, float]:
    """Run the scenario and return the worst relative error per quantity against the oracle.

    Args:
        config (dict): AdaBalance keyword arguments shared by every group.
        dtype (torch.dtype): dtype of the parameters under test.
        steps (int): number of optimizer steps.
        make_optimizer (Callable): builds the optimizer from ``(param_groups, **config)``.
        seed (int): seed of the random problem.
        compare_master (bool): compare the fp32 master copy (low-precision parameters) with the
            oracle, and check that the parameter holds it rounded to nearest.

    Returns:
        dict: ``{"param": err, "exp_avg": err, "exp_avg_sq": err, "exp_avg_lr": err}``.
    """
    generator = torch.Generator().manual_seed(seed)

    def randn(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    live_groups: list[list[torch.Tensor]] = []
    targets: list[list[torch.Tensor]] = []
    scales: list[list[torch.Tensor]] = []
    for shapes in GROUP_SHAPES:
        live_groups.append([randn(s).to(dtype).requires_grad_() for s in shapes])
        targets.append([randn(s) for s in shapes])
        # Per-element gradient scales over four decades, so some rates hit the upper bound.
        scales.append(
            [10.0 ** (-3 * torch.rand(s, generator=generator, dtype=torch.float64)) for s in shapes]
        )

    hypers = [{**_defaults(), **config, **override} for override in GROUP_OVERRIDES]
    sign = -1.0 if config.get("maximize", False) else 1.0

    oracle = OracleAdaBalance()
    optimizer = make_optimizer(
        [{"params": live_groups[g], **GROUP_OVERRIDES[g]} for g in range(2)], **config
    )
    oracle.add_group(live_groups[0], hypers[0]["lr"])
    oracle.add_group(live_groups[1], hypers[1]["lr"])
    active = 2

    for step in range(steps):
        if step == LATE_GROUP_STEP:
            optimizer.add_param_group({"params": live_groups[2], **GROUP_OVERRIDES[2]})
            oracle.add_group(live_groups[2], hypers[2]["lr"])
            active = 3
        if step == LR_CHANGE_STEP:
            for g in range(active):
                hypers[g]["lr"] *= LR_CHANGE_FACTOR
                optimizer.param_groups[g]["lr"] = hypers[g]["lr"]

        for g in range(active):
            oracle_grads = []
            for k, live in enumerate(live_groups[g]):
                if _no_grad_this_step(step, k):
                    live.grad = None
                    oracle_grads.append(None)
                    continue
                noise = randn(live.shape) * scales[g][k]
                target = targets[g][k]
                live.grad = (sign * (noise + 0.5 * (live.detach().double() - target))).to(dtype)
                oracle_grads.append(live.grad.double())
            oracle.step(g, oracle_grads, hypers[g])
        optimizer.step()

    return _worst_errors(optimizer, live_groups, oracle, compare_master)


def _defaults() -> dict[str, Any]:
    return {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "beta3": 0.999,
        "final_lr": 0.1,
        "gamma": 1e-3,
        "eps": 1e-8,
        "weight_decay": 0.0,
    }


def _worst_errors(
    optimizer: torch.optim.Optimizer,
    live_groups: list[list[torch.Tensor]],
    oracle: OracleAdaBalance,
    compare_master: bool,
) -> dict[str, float]:
    errors = {"param": 0.0, "exp_avg": 0.0, "exp_avg_sq": 0.0, "exp_avg_lr": 0.0}
    fields = {"exp_avg": "m", "exp_avg_sq": "v", "exp_avg_lr": "s"}
    # Only the groups that joined: a run shorter than LATE_GROUP_STEP never adds the third.
    for g, params in enumerate(live_groups[: len(oracle.groups)]):
        for live, ref_state in zip(params, oracle.groups[g].tensors, strict=True):
            state = optimizer.state[live]
            if compare_master:
                master = state["master_param"]
                assert master.dtype == torch.float32
                assert torch.equal(live.detach(), master.to(live.dtype)), "param != master"
                live = master
            errors["param"] = max(errors["param"], relative_error(live, ref_state.param))
            assert int(state["step"].item()) == ref_state.step, "step counts differ"
            for key, attr in fields.items():
                ref = getattr(ref_state, attr)
                errors[key] = max(errors[key], relative_error(state[key], ref))
    return errors
