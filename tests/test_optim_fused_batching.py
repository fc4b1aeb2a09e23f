"""The fused path steps small tensors as one concatenated tensor, and tensors in chunks per call.

Batching must not change a single bit: the kernel is elementwise, so stepping a concatenation and
copying back gives what stepping each tensor gives. Each test checks that its tensors really were
batched (with master weights where they are low-precision); the oracle checks both the batched
path and the unbatched one, where every tensor is a member of a chunk of its own.
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


def _record_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Record each compiled call's tensor sizes, the scratch tensors of a short chunk left out."""
    calls: list[list[int]] = []
    run_compiled = _fused.run_compiled

    def recording(variant, kernel, args, **kwargs) -> None:
        chunk = args[0]
        assert len(chunk) == _fused._CHUNK  # every call is a full chunk: one compiled graph
        scratch = _fused._scratch(variant, chunk[0].param.device)
        calls.append([t.param.numel() for t in chunk if not any(t is s for s in scratch)])
        run_compiled(variant, kernel, args, **kwargs)

    monkeypatch.setattr(_fused, "run_compiled", recording)
    return calls


def test_small_tensors_share_one_member_per_variant_and_large_ones_share_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    large = _fused._BATCH_NUMEL
    params = [torch.zeros(n, requires_grad=True) for n in (3, 10, 100, large)]
    params.append(torch.zeros(20, dtype=torch.bfloat16, requires_grad=True))
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer = AdaBalance(params, fused=True)
    calls = _record_calls(monkeypatch)
    optimizer.step()
    # fp32: the large one and the smalls concatenated (113 elements) in one call; bf16 apart
    assert sorted(calls) == sorted([[large, 113], [20]])


# 2-D and 1-D tensors above the batching size, two of them equal in size, and two small ones.
LARGE_SHAPES = [(256, 256), (65_552,), (300, 256), (256, 256), (257, 256), (65_536,)]


def _train_large(steps: int = 5) -> tuple[list[torch.Tensor], AdaBalance]:
    generator = torch.Generator().manual_seed(0)
    params = [
        torch.randn(shape, generator=generator).requires_grad_()
        for shape in [*LARGE_SHAPES, (3,), (10,)]
    ]
    optimizer = AdaBalance(params, lr=1e-2, amsbound=True, fused=True)
    for step in range(steps):
        for i, param in enumerate(params):
            # Every other step, one large tensor has no gradient: chunks change members.
            missing = step % 2 == 1 and i == 2
            param.grad = None if missing else torch.randn(param.shape, generator=generator)
        optimizer.step()
    return params, optimizer


def test_large_tensors_step_in_full_chunks_bitwise_like_one_call_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(_fused, "_CHUNK", 4)  # two calls a step, whatever the shipped size
        calls = _record_calls(patch)
        chunked, chunked_optimizer = _train_large()
    numels = [torch.Size(shape).numel() for shape in LARGE_SHAPES]
    assert calls[0] == numels[:4] and calls[1] == [*numels[4:], 13]  # 13: the smalls together
    monkeypatch.setattr(_fused, "_CHUNK", 1)
    single, single_optimizer = _train_large()
    for a, b in zip(chunked, single, strict=True):
        assert torch.equal(a, b)
        for key, value in chunked_optimizer.state[a].items():
            assert torch.equal(value, single_optimizer.state[b][key]), key


def test_one_compiled_graph_serves_every_chunk() -> None:
    """Views of 2-D and 1-D tensors, concatenations, scratch tensors, equal and unequal sizes.

    Dynamo would otherwise guard on each slot's view base and on which sizes were equal at the
    first call, and recompile for each new pattern, up to its cache limit (then run eagerly).
    """
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    _fused._compiled_kernel.cache_clear()
    before = counters["stats"]["unique_graphs"]
    _train_large()
    assert counters["stats"]["unique_graphs"] - before == 1


def test_tensors_at_different_steps_are_not_batched_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, late = torch.zeros(4, requires_grad=True), torch.zeros(6, requires_grad=True)
    optimizer = AdaBalance([first, late], fused=True)
    first.grad = torch.ones_like(first)
    optimizer.step()  # only `first` has a gradient: its step count runs ahead
    late.grad = torch.ones_like(late)
    first.grad = torch.ones_like(first)
    calls = _record_calls(monkeypatch)
    optimizer.step()
    assert sorted(calls) == [[4], [6]]  # different bias corrections and bounds: separate calls


@pytest.mark.parametrize(
    "config",
    [{}, {"amsbound": True, "weight_decay": 0.05, "decoupled_weight_decay": True, "gamma": 0.01}],
    ids=["defaults", "everything_on"],
)
def test_unbatched_tensors_in_chunks_follow_the_oracle(
    config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fused, "_BATCH_NUMEL", 0)
    errors = run_parity({**config, "fused": True}, torch.float32, steps=200)
    assert max(errors.values()) <= 1e-5, errors
