"""The per-step scalars every path takes from ``_step_scalars``: bias corrections and bounds.

Checked against the spec's formulas written out here in float64 (as in ``_oracle.py``), over
random hyper-parameters; the paths' parity tests check that the paths use them.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adabalance_hf.optim._step_scalars import (
    KernelScalarsCache,
    final_rate,
    kernel_scalars,
    step_scalars,
)
from adabalance_hf.optim.options import Hyper

betas = st.floats(0.0, 0.9999)
rates = st.floats(1e-6, 1.0)
steps = st.integers(1, 10**6)


def _spec_bounds(t: int, lr: float, base_lr: float, final_lr: float, gamma: float):
    rate = 0.0 if lr == 0 else final_lr if base_lr == 0 else final_lr * lr / base_lr
    if gamma == 0:
        return 0.0, math.inf
    return rate * (1 - 1 / (gamma * t + 1)), rate * (1 + 1 / (gamma * t))


def test_final_rate_follows_the_schedule_and_has_a_meaning_at_zero() -> None:
    assert final_rate(lr=5e-4, base_lr=1e-3, final_lr=0.1) == pytest.approx(0.05, rel=1e-15)
    assert final_rate(lr=0.0, base_lr=1e-3, final_lr=0.1) == 0.0  # a step that moves nothing
    assert final_rate(lr=1e-3, base_lr=0.0, final_lr=0.1) == 0.1  # created with lr=0: unscaled
    assert final_rate(lr=0.0, base_lr=0.0, final_lr=0.1) == 0.0


@settings(max_examples=200, deadline=None)
@given(t=steps, lr=rates, base_lr=rates, beta1=betas, beta2=betas, final_lr=rates,
       gamma=st.floats(1e-6, 1.0))  # fmt: skip
def test_step_scalars_are_the_spec_formulas(t, lr, base_lr, beta1, beta2, final_lr, gamma):
    s = step_scalars(t, lr=lr, base_lr=base_lr, beta1=beta1, beta2=beta2, final_lr=final_lr,
                     gamma=gamma)  # fmt: skip
    lower, upper = _spec_bounds(t, lr, base_lr, final_lr, gamma)
    assert s.step_size == pytest.approx(lr / (1 - beta1**t), rel=1e-12)
    assert s.bias_correction2_sqrt == pytest.approx(math.sqrt(1 - beta2**t), rel=1e-12)
    assert s.lower == pytest.approx(lower, rel=1e-12)
    assert s.upper == pytest.approx(upper, rel=1e-12)
    assert 0.0 <= s.lower <= final_rate(lr, base_lr, final_lr) <= s.upper


def test_the_bounds_close_in_on_the_final_rate() -> None:
    kwargs = dict(lr=1e-3, base_lr=1e-3, beta1=0.9, beta2=0.999, final_lr=0.1, gamma=1e-3)
    bounds = [step_scalars(t, **kwargs) for t in (1, 10, 1000, 10**6, 10**9)]
    lowers, uppers = [b.lower for b in bounds], [b.upper for b in bounds]
    assert lowers == sorted(lowers) and uppers == sorted(uppers, reverse=True)
    assert lowers[0] == pytest.approx(0.1 * 1e-3 / (1e-3 + 1), rel=1e-12)  # t = 1
    assert lowers[-1] == pytest.approx(0.1, rel=1e-5) and uppers[-1] == pytest.approx(0.1, rel=1e-5)


def test_gamma_zero_turns_the_bounds_off() -> None:
    s = step_scalars(7, lr=1e-3, base_lr=1e-3, beta1=0.9, beta2=0.999, final_lr=0.1, gamma=0.0)
    assert (s.lower, s.upper) == (0.0, math.inf)


def _kernel(**overrides):
    kwargs = dict(lr=1e-3, base_lr=1e-3, beta1=0.9, beta2=0.999, beta3=0.99, final_lr=0.1,
                  gamma=1e-3, eps=1e-8, weight_decay=0.1, decoupled_weight_decay=False,
                  maximize=False, amsbound=False, stochastic_round=False)  # fmt: skip
    return kernel_scalars(5.0, Hyper(**{**kwargs, **overrides}))


def test_kernel_scalars_fold_the_step_and_the_bounds_in() -> None:
    k = _kernel()
    s = step_scalars(5.0, lr=1e-3, base_lr=1e-3, beta1=0.9, beta2=0.999, final_lr=0.1, gamma=1e-3)
    assert k.eta_scale == pytest.approx((1 - 0.99) * 1e-3 / (1 - 0.9**5), rel=1e-12)
    assert (k.bias_correction2_sqrt, k.lower, k.upper) == (
        s.bias_correction2_sqrt, s.lower, s.upper,
    )  # fmt: skip
    assert (k.beta2, k.beta3, k.eps, k.grad_sign) == (0.999, 0.99, 1e-8, 1.0)
    assert _kernel(maximize=True).grad_sign == -1.0


def test_weight_decay_is_either_an_l2_term_or_a_decay_factor_never_both() -> None:
    coupled, decoupled = _kernel(), _kernel(decoupled_weight_decay=True)
    assert (coupled.l2, coupled.decay) == (0.1, 1.0)
    assert decoupled.l2 == 0.0 and decoupled.decay == pytest.approx(1 - 1e-3 * 0.1, rel=1e-15)


def test_complements_are_taken_in_float64_before_the_kernel_casts_them() -> None:
    # in float32, 1 - 0.999 is off by 1e-5 relative: the kernel would weight g * g wrongly
    vector = torch.tensor(_kernel(), dtype=torch.float32)
    one_minus_beta2 = vector[_kernel()._fields.index("one_minus_beta2")]
    assert one_minus_beta2 == torch.tensor(1 - 0.999, dtype=torch.float32)
    float32_difference = torch.tensor(1.0) - torch.tensor(0.999)
    assert one_minus_beta2 != float32_difference


def test_the_kernel_vector_is_made_once_per_step_count_device_and_dtype() -> None:
    hyper = Hyper(lr=1e-3, base_lr=1e-3, beta1=0.9, beta2=0.999, beta3=0.99, final_lr=0.1,
                  gamma=1e-3, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
                  maximize=False, amsbound=False, stochastic_round=False)  # fmt: skip
    cache = KernelScalarsCache(hyper)
    cpu = torch.device("cpu")
    first = cache.vector(3.0, cpu, torch.float32)
    assert cache.vector(3.0, cpu, torch.float32) is first  # one vector for a group's tensors
    assert torch.equal(first, torch.tensor(kernel_scalars(3.0, hyper), dtype=torch.float32))
    later = cache.vector(4.0, cpu, torch.float32)
    assert torch.equal(later, torch.tensor(kernel_scalars(4.0, hyper), dtype=torch.float32))
    assert cache.vector(3.0, cpu, torch.float64).dtype == torch.float64
