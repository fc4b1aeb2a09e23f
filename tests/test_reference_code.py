"""The benchmark's baseline, ``benchmarks/_reference_adabalance.py``, computes AdaBalance.

``benchmarks/step_speed.py`` times the reference code's step loop as a baseline (the class is
imported from there, as the benchmark uses it); its figures compare like with like only while
that loop computes what the spec says. Checked here against
the float64 oracle (``_oracle.py``), in float64, element by element: two parameter groups with
their own hyper-parameters, a learning-rate change (the bounds follow ``lr / base_lr``), tensors
without a gradient on some steps, and gradient scales over four decades so that both bounds of
the rate clip. The reference's documented defects (groups added after construction are never
stepped, ``gamma == 0`` divides by zero) are left out of the scenario: they are not what it times.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _oracle import OracleAdaBalance, relative_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from step_speed import ReferenceAdaBalance

TOLERANCE = 1e-12
STEPS = 200
LR_CHANGE_STEP = 80
SHAPES = [[(7, 5), (11,)], [(3, 4, 2), (6,)]]
GROUP_OVERRIDES: list[dict[str, Any]] = [{}, {"lr": 2e-3, "beta3": 0.99, "final_lr": 0.05}]
DEFAULTS: dict[str, Any] = {  # the spec's; the optimizer gets only the config: its defaults too
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "beta3": 0.999,
    "final_lr": 0.1,
    "gamma": 1e-3,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "amsbound": False,
}
CONFIGS = {
    "defaults": {},
    "l2_weight_decay": {"weight_decay": 1e-2},
    "amsbound": {"amsbound": True},
    "fast_bounds": {"gamma": 0.05, "beta3": 0.9, "final_lr": 0.02},
}
STATE_FIELDS = {"exp_avg": "m", "exp_avg_sq": "v", "exp_avg_lr": "s"}


def run_against_oracle(
    config: dict[str, Any], make_optimizer: type[torch.optim.Optimizer] = ReferenceAdaBalance
) -> dict[str, float]:
    """Step ``make_optimizer`` and the oracle side by side on the same gradients.

    Args:
        config (dict): keyword arguments of the optimizer, shared by both groups.
        make_optimizer (type): the optimizer class under test, built from param groups.

    Returns:
        dict: the worst relative error (infinity norm) of the parameters and of each state.
    """
    gen = torch.Generator().manual_seed(0)
    groups = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in g] for g in SHAPES]
    scales = [
        [10.0 ** (-3 * torch.rand(s, generator=gen, dtype=torch.float64)) for s in g]
        for g in SHAPES
    ]
    params = [[p.clone().requires_grad_(True) for p in g] for g in groups]
    hypers = [{**DEFAULTS, **config, **override} for override in GROUP_OVERRIDES]
    optimizer = make_optimizer(
        [{"params": ps, **o} for ps, o in zip(params, GROUP_OVERRIDES, strict=True)], **config
    )
    oracle = OracleAdaBalance()
    for ps, hyper in zip(params, hypers, strict=True):
        oracle.add_group(ps, hyper["lr"])
    errors = dict.fromkeys(["param", *STATE_FIELDS], 0.0)
    for step in range(STEPS):
        if step == LR_CHANGE_STEP:
            for g, hyper in enumerate(hypers):
                hyper["lr"] *= 0.3
                optimizer.param_groups[g]["lr"] = hyper["lr"]
        for g, ps in enumerate(params):
            grads = []
            for k, p in enumerate(ps):
                skip = (step + 3 * k + g) % 7 == 0
                p.grad = None if skip else torch.randn(p.shape, generator=gen) * scales[g][k]
                grads.append(p.grad)
            oracle.step(g, grads, hypers[g])
        optimizer.step()
        for g, ps in enumerate(params):
            for p, expected in zip(ps, oracle.groups[g].tensors, strict=True):
                errors["param"] = max(errors["param"], relative_error(p, expected.param))
                if expected.m is None:  # no gradient yet: no state on either side
                    assert not optimizer.state[p]
                    continue
                for name, field in STATE_FIELDS.items():
                    err = relative_error(optimizer.state[p][name], getattr(expected, field))
                    errors[name] = max(errors[name], err)
    return errors


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_reference_code_matches_the_float64_oracle(config: dict[str, Any]) -> None:
    errors = run_against_oracle(config)
    assert max(errors.values()) <= TOLERANCE, errors


def test_the_comparison_catches_a_broken_reference() -> None:
    """The check has teeth: bounds that ignore the learning-rate change are caught."""

    class BoundsIgnoreTheSchedule(ReferenceAdaBalance):
        def step(self, closure=None):
            self.base_lrs = [group["lr"] for group in self.param_groups]
            return super().step(closure)

    errors = run_against_oracle(CONFIGS["fast_bounds"], BoundsIgnoreTheSchedule)
    assert errors["param"] > 1e-6, errors
