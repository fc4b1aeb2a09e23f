"""A step's transient memory stays within max(10% of the parameters, the largest tensor)."""

from __future__ import annotations

import pytest
import torch

from adabalance_hf import AdaBalance
from adabalance_hf._memory import peak_extra_bytes_cpu, state_bytes

# Many tensors, the largest well under 10% of the total, so chunking (not one tensor) binds.
SHAPES = [(256, 256)] * 24 + [(1024,)] * 8 + [(300, 200)]


def _params() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=generator).requires_grad_() for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    return params


@pytest.mark.parametrize(
    "options",
    [
        {"foreach": False},
        {"foreach": True},
        {"foreach": True, "maximize": True, "weight_decay": 0.1, "amsbound": True},
        {"fused": True},
    ],
    ids=["per_tensor", "foreach", "foreach_l2_maximize_amsbound", "fused"],
)
def test_step_transient_memory_is_bounded(options: dict) -> None:
    params = _params()
    optimizer = AdaBalance(params, **options)
    optimizer.step()  # creates the state (and compiles): not a transient
    numels = [p.numel() for p in params]
    bound = max(0.1 * sum(numels), max(numels)) * 4  # fp32 bytes
    peak = peak_extra_bytes_cpu(optimizer.step)
    assert peak <= bound * 1.01 + 4096, (peak, bound)


def test_torch_foreach_adamw_exceeds_the_bound_so_the_measure_has_teeth() -> None:
    params = _params()
    optimizer = torch.optim.AdamW(params, foreach=True)
    optimizer.step()
    numels = [p.numel() for p in params]
    bound = max(0.1 * sum(numels), max(numels)) * 4
    assert peak_extra_bytes_cpu(optimizer.step) > 2 * bound


def test_the_measure_sees_known_temporaries_and_counts_state() -> None:
    """The measures themselves (shared with benchmarks/step_speed.py): two temporaries of known
    size alive at once, and the state of one AdaBalance step (m, v, s in fp32, and a step counter
    per tensor). (``self_check``'s cross-check against the resident set needs a fresh process:
    here freed heap memory is reused without the resident set growing.)"""
    x = torch.randn(1_000_000)

    def two_temporaries() -> None:
        a = x + 1
        b = x * 2
        del a
        c = b.sqrt()
        del b, c

    assert 8_000_000 <= peak_extra_bytes_cpu(two_temporaries) <= 8_000_000 + 64 * 1024
    params = _params()
    optimizer = AdaBalance(params)
    optimizer.step()
    counters = sum(s["step"].numel() * s["step"].element_size() for s in optimizer.state.values())
    assert state_bytes(optimizer) == 3 * 4 * sum(p.numel() for p in params) + counters
