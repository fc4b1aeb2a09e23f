"""Every execution path follows the float64 oracle of the spec over 300+ steps."""

from __future__ import annotations

import pytest
import torch
from _parity import LATE_GROUP_STEP, run_parity

from adabalance_hf import AdaBalance

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}

CONFIGS = {
    "defaults": {},
    "amsbound": {"amsbound": True},
    "l2_weight_decay": {"weight_decay": 0.1},
    "decoupled_weight_decay": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "maximize": {"maximize": True},
    "no_bounds_gamma0": {"gamma": 0.0},
    "fast_bounds": {"gamma": 0.05, "beta3": 0.9, "final_lr": 0.02},
    "everything_on": {
        "amsbound": True,
        "weight_decay": 0.05,
        "decoupled_weight_decay": True,
        "maximize": True,
        "gamma": 0.01,
    },
}


PATHS = {
    "per_tensor": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_matches_float64_oracle(config: dict, dtype: torch.dtype, path: dict) -> None:
    errors = run_parity({**config, **path}, dtype, steps=300)
    assert max(errors.values()) <= TOLERANCE[dtype], errors


def test_oracle_comparison_detects_a_wrong_bound() -> None:
    """The harness has teeth: an optimizer whose bounds ignore the lr schedule is caught."""

    class NoScheduleBounds(AdaBalance):
        def step(self, closure=None):
            for group in self.param_groups:
                group["base_lr"] = group["lr"]
            return super().step(closure)

    errors = run_parity({"gamma": 0.05}, torch.float64, steps=200, make_optimizer=NoScheduleBounds)
    assert errors["param"] > 1e-6


@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
def test_paths_agree_on_mixed_dtypes_in_one_group(path: dict) -> None:
    torch.manual_seed(0)
    params = [torch.randn(4, 3), torch.randn(5, dtype=torch.float64), torch.randn(2, 2)]
    reference = [p.clone().requires_grad_() for p in params]
    candidate = [p.clone().requires_grad_() for p in params]
    opt_ref = AdaBalance(reference, lr=1e-2, gamma=0.05, foreach=False)
    opt = AdaBalance(candidate, lr=1e-2, gamma=0.05, **path)
    for _ in range(30):
        for ref, cand in zip(reference, candidate, strict=True):
            grad = torch.randn_like(ref)
            ref.grad, cand.grad = grad, grad.clone()
        opt_ref.step()
        opt.step()
    for ref, cand in zip(reference, candidate, strict=True):
        assert cand.dtype == ref.dtype
        torch.testing.assert_close(cand, ref, rtol=1e-6, atol=1e-7)


def test_a_run_shorter_than_the_late_group_compares_the_groups_that_joined() -> None:
    errors = run_parity({"foreach": False}, torch.float64, steps=LATE_GROUP_STEP // 2)
    assert max(errors.values()) <= 1e-12, errors
