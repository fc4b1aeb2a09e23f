"""GradScaler hands grad_scale and found_inf to the fused kernel, as to torch's fused Adam.

The fused step reads neither on the host (on an accelerator each read would be a device
synchronisation), unscales in the kernel, and a step with inf/nan gradients changes nothing, as
``torch.optim.AdamW(fused=True)`` under the same scaler; the other paths read ``found_inf`` on the
host and unscale first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from _oracle import OracleAdaBalance, relative_error
from torch import nn

from adabalance_hf import AdaBalance

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def no_host_reads(optimizer: torch.optim.Optimizer) -> Iterator[list[str]]:
    """Make every read of a tensor's value on the host raise, but the CPU step counters'.

    The counters are 0-dim CPU tensors by design (as in torch's non-capturable optimizers), so
    reading them never synchronises a device; grad_scale and found_inf live on the gradients'
    device, where a read would.
    """
    reads: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def guarded(name: str):
        original = originals[name]

        def read(self: torch.Tensor, *args, **kwargs):
            counters = (state.get("step") for state in optimizer.state.values())
            if not any(self is counter for counter in counters):
                reads.append(name)
                raise AssertionError(f"Tensor.{name}() read a value on the host during step()")
            return original(self, *args, **kwargs)

        return read

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, guarded(name))
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _backward(model: nn.Module, scaler: torch.amp.GradScaler, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    inputs = torch.randn(16, 6, generator=generator).to(next(model.parameters()).dtype)
    scaler.scale(model(inputs).float().pow(2).mean()).backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("skip_nonfinite_grads", [False, True], ids=["", "skip_nonfinite"])
def test_fused_step_reads_neither_grad_scale_nor_found_inf_on_the_host(
    dtype: torch.dtype, skip_nonfinite_grads: bool
) -> None:
    model = _model(dtype)
    optimizer = AdaBalance(
        model.parameters(), lr=1e-2, fused=True, skip_nonfinite_grads=skip_nonfinite_grads
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step in range(4):
        optimizer.zero_grad()
        _backward(model, scaler, step)
        if step == 2:
            model[0].weight.grad[1, 1] = float("inf")
        with no_host_reads(optimizer):
            scaler.step(optimizer)
        scaler.update()
    assert optimizer.state[model[0].weight]["step"].item() == 3.0
    assert optimizer.nonfinite_steps_skipped == 0  # GradScaler's skips are its own


def test_the_guard_catches_the_host_read_of_the_foreach_path() -> None:
    model = _model()
    optimizer = AdaBalance(model.parameters(), foreach=True)
    scaler = torch.amp.GradScaler("cpu")
    _backward(model, scaler, 0)
    with pytest.raises(AssertionError, match=r"Tensor\.item\(\)"), no_host_reads(optimizer):
        scaler.step(optimizer)


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal, a NaN (of a poisoned gradient) equal to itself."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = []
    for param in model.parameters():
        tensors += [param.detach().clone(), param.grad.clone()]
        tensors += [value.clone() for value in optimizer.state[param].values()]
    return tensors


@pytest.mark.parametrize("path", [{"fused": True}, {"foreach": True}], ids=["fused", "foreach"])
def test_skipped_steps_change_nothing_and_taken_ones_follow_the_oracle_like_adamw(
    path: dict,
) -> None:
    """Same scaled gradients for AdaBalance and fused AdamW; inf/nan on steps 1 and 3."""
    ours, theirs = _model(), _model()
    optimizer = AdaBalance(ours.parameters(), lr=1e-2, gamma=0.1, **path)
    adamw = torch.optim.AdamW(theirs.parameters(), lr=1e-2, fused=True)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**8) for _ in range(2)]
    oracle = OracleAdaBalance()
    oracle.add_group(list(ours.parameters()), 1e-2)
    hyper = {"lr": 1e-2, "betas": (0.9, 0.999), "beta3": 0.999, "final_lr": 0.1, "gamma": 0.1,
             "eps": 1e-8, "weight_decay": 0.0}  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=generator) for p in ours.parameters()]
        scale = scalers[0].get_scale()
        assert scalers[1].get_scale() == scale
        for model, scaler in zip((ours, theirs), scalers, strict=True):
            scaler.scale(torch.ones(()))  # starts the scaler; the gradients are set below
            for param, grad in zip(model.parameters(), grads, strict=True):
                param.grad = grad * scale  # exact: the scale is a power of two
                if step in (1, 3):
                    param.grad[0] = float("inf") if step == 1 else float("nan")
        before = [_snapshot(ours, optimizer), _snapshot(theirs, adamw)]
        for model_optimizer, scaler in zip((optimizer, adamw), scalers, strict=True):
            scaler.step(model_optimizer)
            scaler.update()
        after = [_snapshot(ours, optimizer), _snapshot(theirs, adamw)]
        if step in (1, 3):  # skipped: every parameter, gradient and state tensor as it was
            for old, new in zip(before, after, strict=True):
                assert all(map(_identical, old, new))
            continue
        oracle.step(0, [g.double() for g in grads], hyper)
        for param, other, grad in zip(ours.parameters(), theirs.parameters(), grads, strict=True):
            assert torch.equal(param.grad, grad)  # unscaled in .grad, as AdamW leaves it
            assert torch.equal(other.grad, grad)
    for param, other in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert optimizer.state[param]["step"].item() == adamw.state[other]["step"].item() == 4
    for param, reference in zip(ours.parameters(), oracle.groups[0].tensors, strict=True):
        assert relative_error(param, reference.param) <= 1e-5
        assert relative_error(optimizer.state[param]["exp_avg_lr"], reference.s) <= 1e-5


def test_a_skipped_first_fused_step_leaves_zero_state_that_steps_like_none() -> None:
    """As in torch's fused Adam, state is made before the kernel knows the step is skipped."""
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    skipped_first = AdaBalance(params, lr=1e-2, fused=True)
    plain = AdaBalance(twins, lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(torch.ones(()))
    for p in params:
        p.grad = torch.full_like(p, float("inf"))
    scaler.step(skipped_first)
    scaler.update()
    assert all(skipped_first.state[p]["step"].item() == 0 for p in params)
    assert all(not skipped_first.state[p]["exp_avg"].any() for p in params)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=generator) for p in params]
        scale = scaler.get_scale()
        scaler.scale(torch.ones(()))
        for p, twin, grad in zip(params, twins, grads, strict=True):
            p.grad, twin.grad = grad * scale, grad.clone()
        scaler.step(skipped_first)
        scaler.update()
        plain.step()
    for p, twin in zip(params, twins, strict=True):
        assert torch.equal(p, twin)


def test_single_element_params_under_the_fused_path_unscale_and_skip_on_the_host() -> None:
    """They take the per-tensor path (its arithmetic), which reads found_inf on the host."""
    weight = torch.randn(4, 2, requires_grad=True)
    scalar = torch.randn(1, requires_grad=True)
    references = [weight.detach().clone().requires_grad_(), scalar.detach().clone()]
    references[1].requires_grad_()
    fused = AdaBalance([weight, scalar], lr=1e-2, gamma=0.1, fused=True)
    reference = AdaBalance(references, lr=1e-2, gamma=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**6)
    generator = torch.Generator().manual_seed(0)
    for step in range(5):
        grads = [torch.randn(p.shape, generator=generator) for p in (weight, scalar)]
        scale = scaler.get_scale()
        scaler.scale(torch.ones(()))
        for p, ref, grad in zip((weight, scalar), references, grads, strict=True):
            p.grad = grad * scale
            ref.grad = grad.clone()
            if step == 2:
                p.grad[0] = float("nan")
        scaler.step(fused)
        scaler.update()
        if step != 2:
            reference.step()
    for p, ref in zip((weight, scalar), references, strict=True):
        assert torch.equal(p, ref)
        for key, value in fused.state[p].items():
            assert torch.equal(value, reference.state[ref][key]), key
