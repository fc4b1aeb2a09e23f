"""The base learning rate and the optimizer state survive every way of saving and copying."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from adabalance_hf import AdaBalance


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _batches(count: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 6, generator=generator), torch.randn(16, 3, generator=generator))
        for _ in range(count)
    ]


def _train(model, optimizer, scheduler, batches) -> None:
    for inputs, targets in batches:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
        scheduler.step()


def _make(model: nn.Module, lr: float, foreach: bool, fused: bool = False):
    groups = [
        {"params": [model[0].weight, model[2].weight]},
        {"params": [model[0].bias, model[2].bias], "lr": 2 * lr, "weight_decay": 0.0},
    ]
    optimizer = AdaBalance(
        groups,
        lr=lr,
        gamma=0.05,
        weight_decay=0.01,
        decoupled_weight_decay=True,
        foreach=foreach,
        fused=fused,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + 0.1 * step))
    return optimizer, scheduler


def _assert_same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    for group_a, group_b in zip(a.param_groups, b.param_groups, strict=True):
        assert group_a["lr"] == group_b["lr"]
        assert group_a["base_lr"] == group_b["base_lr"]
        for p_a, p_b in zip(group_a["params"], group_b["params"], strict=True):
            assert torch.equal(p_a, p_b)
            for key, value in a.state[p_a].items():
                assert torch.equal(value, b.state[p_b][key]), key


@pytest.mark.parametrize(
    ("foreach", "fused"),
    [(False, False), (True, False), (False, True)],
    ids=["per_tensor", "foreach", "fused"],
)
def test_resume_from_state_dict_is_bitwise_identical(foreach: bool, fused: bool) -> None:
    n = 25
    batches = _batches(2 * n)

    model = _model()
    optimizer, scheduler = _make(model, lr=1e-2, foreach=foreach, fused=fused)
    _train(model, optimizer, scheduler, batches)

    interrupted = _model()
    first, first_scheduler = _make(interrupted, lr=1e-2, foreach=foreach, fused=fused)
    _train(interrupted, first, first_scheduler, batches[:n])
    buffer = io.BytesIO()
    checkpoint = {
        "model": interrupted.state_dict(),
        "optimizer": first.state_dict(),
        "scheduler": first_scheduler.state_dict(),
    }
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed = _model(seed=123)
    # Constructed with another lr: base_lr must come from the checkpoint, not the constructor.
    second, second_scheduler = _make(resumed, lr=0.5, foreach=foreach, fused=fused)
    resumed.load_state_dict(checkpoint["model"])
    second.load_state_dict(checkpoint["optimizer"])
    second_scheduler.load_state_dict(checkpoint["scheduler"])
    assert [g["base_lr"] for g in second.param_groups] == [1e-2, 2e-2]
    _train(resumed, second, second_scheduler, batches[n:])

    _assert_same_state(optimizer, second)


def test_base_lr_is_recorded_per_group_including_late_groups() -> None:
    model = _model()
    optimizer = AdaBalance([model[0].weight], lr=3e-3)
    optimizer.add_param_group({"params": [model[0].bias], "lr": 7e-4})
    optimizer.add_param_group({"params": [model[2].weight], "lr": 1e-3, "base_lr": 4e-3})
    assert [g["base_lr"] for g in optimizer.param_groups] == [3e-3, 7e-4, 4e-3]
    torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    # OneCycleLR rewrites lr and initial_lr at construction; the base rate stays the group's own.
    assert [g["base_lr"] for g in optimizer.param_groups] == [3e-3, 7e-4, 4e-3]
    assert "base_lr" in optimizer.state_dict()["param_groups"][1]


def test_tensor_lr_is_recorded_as_a_float_base_lr() -> None:
    optimizer = AdaBalance([torch.zeros(2, requires_grad=True)], lr=torch.tensor(0.02))
    assert optimizer.param_groups[0]["base_lr"] == pytest.approx(0.02)
    assert isinstance(optimizer.param_groups[0]["base_lr"], float)


def _step_with_same_grads(optimizers_and_params, steps: int = 5) -> None:
    generator = torch.Generator().manual_seed(5)
    for _ in range(steps):
        grads = None
        for optimizer, params in optimizers_and_params:
            if grads is None:
                grads = [torch.randn(p.shape, generator=generator) for p in params]
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()


def test_deepcopy_and_pickle_keep_base_lr_and_state() -> None:
    model = _model()
    params = list(model.parameters())
    optimizer = AdaBalance(params, lr=1e-2, gamma=0.1)
    _step_with_same_grads([(optimizer, params)], steps=3)
    optimizer.param_groups[0]["lr"] = 2e-3  # a scheduler moved lr away from the base rate

    copies = [copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))]
    for clone in copies:
        assert clone.param_groups[0]["base_lr"] == 1e-2
        assert clone.param_groups[0]["lr"] == 2e-3
    pairs = [(optimizer, params)] + [(c, c.param_groups[0]["params"]) for c in copies]
    _step_with_same_grads(pairs, steps=5)
    for clone in copies:
        _assert_same_state(optimizer, clone)


def test_state_dict_of_an_older_version_loads_with_defaults() -> None:
    """A state dict without base_lr and the newer options (and an int step) still loads."""
    params = [torch.randn(3, requires_grad=True)]
    optimizer = AdaBalance(params, lr=1e-3)
    params[0].grad = torch.ones(3)
    optimizer.step()
    old = optimizer.state_dict()
    for group in old["param_groups"]:
        for key in ("base_lr", "decoupled_weight_decay", "maximize", "foreach", "differentiable"):
            del group[key]
        group["initial_lr"] = 5e-3  # left by a scheduler, the best record of the base rate
        group["lr"] = 1e-3
    old["state"][0]["step"] = 1

    fresh = AdaBalance(params, lr=0.1)
    fresh.load_state_dict(old)
    group = fresh.param_groups[0]
    assert group["base_lr"] == 5e-3
    assert group["decoupled_weight_decay"] is False and group["maximize"] is False
    step = fresh.state[params[0]]["step"]
    assert torch.is_tensor(step) and step.item() == 1.0
    fresh.step()
    assert fresh.state[params[0]]["step"].item() == 2.0


def test_step_counts_are_cpu_float_tensors_that_skip_params_without_grad() -> None:
    a, b = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    optimizer = AdaBalance([a, b])
    for step in range(4):
        a.grad = torch.ones(3)
        b.grad = torch.ones(2) if step % 2 == 0 else None
        optimizer.step()
    step_a, step_b = optimizer.state[a]["step"], optimizer.state[b]["step"]
    assert step_a.dim() == 0 and step_a.dtype == torch.float32 and step_a.device.type == "cpu"
    assert (step_a.item(), step_b.item()) == (4.0, 2.0)
