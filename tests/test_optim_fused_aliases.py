"""The fused step keeps its 1-D aliases of parameters and states from one step to the next.

Reusing them must never step stale memory (a parameter whose ``.data`` was replaced, a state
replaced by a new tensor) and must not keep alive what the optimizer no longer holds (the
gradients a ``zero_grad`` drops, the state a ``load_state_dict`` replaces).
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from adabalance_hf import AdaBalance
from adabalance_hf.optim import _flat_aliases, _fused

SHAPES = [(70, 30), (300,), (5, 4, 3)]


def _params(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in SHAPES]


def _set_grads(params: list[torch.Tensor], generator: torch.Generator) -> None:
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator)


def test_only_the_gradients_are_flattened_again_after_the_first_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flattened: list[int] = []
    flat = _flat_aliases.flat

    def counting(tensor: torch.Tensor) -> torch.Tensor:
        flattened.append(id(tensor))
        return flat(tensor)

    monkeypatch.setattr(_flat_aliases, "flat", counting)
    monkeypatch.setattr(_fused, "flat", counting)  # the gradients'
    params = _params()
    optimizer = AdaBalance(params, lr=1e-2, fused=True, amsbound=True)
    generator = torch.Generator().manual_seed(1)
    per_step = []
    for _ in range(3):
        _set_grads(params, generator)
        flattened.clear()
        optimizer.step()
        per_step.append(len(flattened))
    # param, grad, m, v, s, max v: six per tensor at the first step, then the gradient only.
    assert per_step == [6 * len(params), len(params), len(params)]


@pytest.mark.parametrize("replaced", ["param", "exp_avg", "exp_avg_sq", "exp_avg_lr"])
def test_a_tensor_whose_data_is_replaced_is_stepped_in_its_new_memory(replaced: str) -> None:
    """``param.data = ...`` (``module.to``, FSDP2 resetting a shard) keeps the tensor object but
    moves its memory: the alias of the old memory must not be reused."""
    params, twin_params = _params(), _params()
    optimizer = AdaBalance(params, lr=1e-2, fused=True)
    twin = AdaBalance(twin_params, lr=1e-2, fused=True)
    generators = [torch.Generator().manual_seed(1) for _ in range(2)]
    for step in range(6):
        if step == 3:
            tensor = params[0] if replaced == "param" else optimizer.state[params[0]][replaced]
            old = tensor.data
            tensor.data = tensor.data.clone()
        for group, generator in zip((params, twin_params), generators, strict=True):
            _set_grads(group, generator)
        optimizer.step()
        twin.step()
    after = params[0] if replaced == "param" else optimizer.state[params[0]][replaced]
    expected = twin_params[0] if replaced == "param" else twin.state[twin_params[0]][replaced]
    assert torch.equal(after, expected)
    assert not torch.equal(after, old)  # the steps after the swap moved the new memory
    for param, twin_param in zip(params, twin_params, strict=True):
        assert torch.equal(param, twin_param)


def test_gradients_dropped_by_zero_grad_are_freed() -> None:
    params = _params()
    optimizer = AdaBalance(params, lr=1e-2, fused=True)
    _set_grads(params, torch.Generator().manual_seed(1))
    optimizer.step()
    grads = [weakref.ref(param.grad) for param in params]
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    assert all(grad() is None for grad in grads)


def test_loading_a_state_dict_frees_the_state_it_replaces() -> None:
    params = _params()
    optimizer = AdaBalance(params, lr=1e-2, fused=True)
    _set_grads(params, torch.Generator().manual_seed(1))
    optimizer.step()
    replaced = [weakref.ref(t) for state in optimizer.state.values() for t in state.values()]
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    gc.collect()
    assert all(tensor() is None for tensor in replaced)


@pytest.mark.parametrize("restore", ["copy_", "data"])
def test_the_same_optimizer_rolled_back_to_a_snapshot_repeats_its_steps(restore: str) -> None:
    """A rollback loads new state tensors into an optimizer that holds aliases of the old ones,
    and restores the parameters in place or by ``.data``: the next steps must be the same."""
    params = _params()
    optimizer = AdaBalance(params, lr=1e-2, fused=True, amsbound=True)
    generator = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(6)]

    def steps(rounds: list[list[torch.Tensor]]) -> None:
        for round_grads in rounds:
            for param, grad in zip(params, round_grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()

    steps(grads[:3])
    snapshot = copy.deepcopy(optimizer.state_dict())
    saved = [p.detach().clone() for p in params]
    steps(grads[3:])
    expected = [p.detach().clone() for p in params]
    expected_state = copy.deepcopy(optimizer.state_dict()["state"])
    optimizer.load_state_dict(snapshot)
    for param, value in zip(params, saved, strict=True):
        if restore == "copy_":
            param.data.copy_(value)
        else:
            param.data = value.clone()
    steps(grads[3:])
    assert all(torch.equal(p, e) for p, e in zip(params, expected, strict=True))
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, expected_state[index][key]), (index, key)
