"""The fused path steps small tensors together (one kernel call) and large ones one call each.

Batching must not change a single bit: the kernel is elementwise, so stepping a concatenation and
copying back gives what stepping each tensor gives. Each test checks that its tensors really were
batched (with master weights where they are low-precision); the oracle checks both the batched
path and the one-call-per-tensor path that large tensors take.
"""

from __future__ import annotations

import pytest
import torch
from _parity import run_parity

from adabalance_hf import AdaBalance
from adabalance_hf.optim import _fused

FP32_SHAPES = [(7,), (33, 5), (1000,), (3, 3), (2, 2, 2)]
# Low-precision tensors small enough to share calls, so their master copies are batched too.
MIXED = [((7,), torch.bfloat16), ((33, 5), torch.float32), ((1000,), torch.bfloat16),
         ((3, 3), torch.float16), ((2, 2, 2), torch.float32), ((5,), torch.bfloat16),
         ((4, 2), torch.float16), ((6,), torch.bfloat16)]  # fmt: skip


def _train(config: dict, specs: list[tuple[tuple[int, ...], torch.dtype]], steps: int = 12):
    generator = torch.Generator().manual_seed(0)
    params = [
        torch.randn(shape, generator=generator).to(dtype).requires_grad_() for shape, dtype in specs
    ]
    optimizer = AdaBalance(params, lr=1e-2, fused=True, **config)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator).to(param.dtype)
        optimizer.step()
    return params, optimizer


def _spy_batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Record each batched call's (number of tensors, whether it carries master weights)."""
    batches: list[tuple[int, bool]] = []
    run_batched = _fused._run_batched

    def spying(variant, batch, *args):
        batches.append((len(batch), batch[0].master is not None))
        run_batched(variant, batch, *args)

    monkeypatch.setattr(_fused, "_run_batched", spying)
    return batches


@pytest.mark.parametrize(
    ("config", "specs"),
    [
        ({}, [(shape, torch.float32) for shape in FP32_SHAPES]),
        ({"amsbound": True, "weight_decay": 0.1, "decoupled_weight_decay": True},
         [(shape, torch.float32) for shape in FP32_SHAPES]),
        ({"weight_decay": 0.1, "maximize": True},
         [(shape, torch.float64) for shape in FP32_SHAPES]),
        ({}, MIXED),
        ({"amsbound": True}, MIXED),
    ],
    ids=["fp32", "amsbound_decoupled", "fp64_l2_maximize", "mixed_master_weights",
         "mixed_master_weights_amsbound"],
)  # fmt: skip
def test_batched_small_tensors_step_bitwise_like_one_call_each(
    config: dict, specs: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        batches = _spy_batches(patch)
        batched, batched_optimizer = _train(config, specs)
    assert any(size > 1 for size, _ in batches), "nothing was batched"
    if specs is MIXED:
        assert any(size > 1 and master for size, master in batches), "no master copy batched"
    monkeypatch.setattr(_fused, "_BATCH_NUMEL", 0)
    single, single_optimizer = _train(config, specs)
    for a, b in zip(batched, single, strict=True):
        assert torch.equal(a, b)
        state_a, state_b = batched_optimizer.state[a], single_optimizer.state[b]
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_batched_master_weights_follow_the_oracle(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parity scenario's tensors are tiny, so its own budget (the largest tensor, 15
    # elements, over 6 copies) batches nothing; a larger budget batches them.
    monkeypatch.setattr(_fused, "transient_budget", lambda numels: 10_000)
    batches = _spy_batches(monkeypatch)
    errors = run_parity({"fused": True}, dtype, steps=120, compare_master=True)
    assert any(size > 1 and master for size, master in batches)
    assert max(errors.values()) <= 1e-5, errors


def _count_kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    run_kernel = _fused._run_kernel

    def counting(variant: tuple, tensors: _fused.KernelTensors, *args: object) -> None:
        sizes.append(tensors.param.numel())
        run_kernel(variant, tensors, *args)

    monkeypatch.setattr(_fused, "_run_kernel", counting)
    return sizes


def test_small_tensors_share_one_call_per_variant_and_large_ones_get_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    large = _fused._BATCH_NUMEL
    params = [torch.zeros(n, requires_grad=True) for n in (3, 10, 100, large)]
    params.append(torch.zeros(20, dtype=torch.bfloat16, requires_grad=True))
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer = AdaBalance(params, fused=True)
    calls = _count_kernel_calls(monkeypatch)
    optimizer.step()
    # fp32 smalls together (113 elements), the large one alone, the bf16 one in its own variant
    assert sorted(calls) == sorted([113, large, 20])


def test_tensors_at_different_steps_are_not_batched_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, late = torch.zeros(4, requires_grad=True), torch.zeros(6, requires_grad=True)
    optimizer = AdaBalance([first, late], fused=True)
    first.grad = torch.ones_like(first)
    optimizer.step()  # only `first` has a gradient: its step count runs ahead
    late.grad = torch.ones_like(late)
    first.grad = torch.ones_like(first)
    calls = _count_kernel_calls(monkeypatch)
    optimizer.step()
    assert sorted(calls) == [4, 6]  # different bias corrections and bounds: separate calls


@pytest.mark.parametrize(
    "config",
    [{}, {"amsbound": True, "weight_decay": 0.05, "decoupled_weight_decay": True, "gamma": 0.01}],
    ids=["defaults", "everything_on"],
)
def test_one_call_per_tensor_follows_the_oracle(
    config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fused, "_BATCH_NUMEL", 0)
    errors = run_parity({**config, "fused": True}, torch.float32, steps=200)
    assert max(errors.values()) <= 1e-5, errors
