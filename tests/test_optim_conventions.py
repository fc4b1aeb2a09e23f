"""AdaBalance behaves like a torch optimizer: closures, schedulers, complex and float64, lr=0."""

from __future__ import annotations

import warnings

import pytest
import torch
from _oracle import OracleAdaBalance, relative_error
from torch import nn

from adabalance_hf import AdaBalance


def test_closure_runs_with_grad_enabled_and_its_loss_is_returned() -> None:
    weight = torch.ones(3, requires_grad=True)
    optimizer = AdaBalance([weight], lr=0.1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        assert torch.is_grad_enabled()
        loss = (weight**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = optimizer.step(closure)
    assert loss.item() == 3.0
    assert optimizer.state[weight]["step"].item() == 1.0
    assert torch.all(weight < 1.0)


def _lambda(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.97**step)


def _one_cycle(optimizer):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=60)


def _cosine(optimizer):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=60, eta_min=1e-4)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
@pytest.mark.parametrize(
    "make_scheduler", [_lambda, _one_cycle, _cosine], ids=["lambda", "onecycle", "cosine"]
)
def test_schedulers_drive_lr_and_bounds_like_the_oracle(make_scheduler, foreach: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=generator, dtype=torch.float64).requires_grad_()]
    optimizer = AdaBalance(params, lr=1e-2, gamma=0.05, final_lr=0.02, foreach=foreach)
    oracle = OracleAdaBalance()
    oracle.add_group(params, lr=1e-2)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(60):
        group = optimizer.param_groups[0]
        hyper = {k: group[k] for k in ("lr", "betas", "beta3", "final_lr", "gamma", "eps")}
        hyper["weight_decay"] = 0.0
        lrs.append(group["lr"])
        params[0].grad = torch.randn(4, 3, generator=generator, dtype=torch.float64)
        oracle.step(0, [params[0].grad.clone()], hyper)
        optimizer.step()
        scheduler.step()
    assert len(set(lrs)) > 10, "the scheduler must actually change lr"
    assert relative_error(params[0], oracle.params(0)[0]) <= 1e-12


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
@pytest.mark.parametrize("amsbound", [False, True], ids=["adabound", "amsbound"])
def test_complex_params_step_as_their_real_view(foreach: bool, amsbound: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    initial = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    complex_param = torch.view_as_complex(initial.clone()).requires_grad_()
    real_param = initial.clone().requires_grad_()
    kwargs = dict(lr=1e-2, gamma=0.05, weight_decay=0.01, amsbound=amsbound, foreach=foreach)
    opt_complex = AdaBalance([complex_param], **kwargs)
    opt_real = AdaBalance([real_param], **kwargs)
    for _ in range(20):
        grad = torch.randn(5, 2, generator=generator, dtype=torch.float64)
        complex_param.grad = torch.view_as_complex(grad.clone())
        real_param.grad = grad
        opt_complex.step()
        opt_real.step()
    assert torch.is_complex(complex_param)
    torch.testing.assert_close(torch.view_as_real(complex_param.detach()), real_param.detach())
    assert not torch.equal(real_param.detach(), initial)


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
@pytest.mark.parametrize("zero_lr", [0.0, torch.tensor(0.0)], ids=["float", "tensor"])
def test_a_step_with_lr_zero_changes_no_parameter(foreach: bool, zero_lr) -> None:
    """What torch.distributed.checkpoint does to initialise optimizer state."""
    model = nn.Linear(4, 2)
    optimizer = AdaBalance(
        model.parameters(),
        lr=1e-3,
        weight_decay=0.1,
        decoupled_weight_decay=True,
        foreach=foreach,
    )
    before = [p.detach().clone() for p in model.parameters()]
    for group in optimizer.param_groups:
        group["lr"] = zero_lr
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p, old in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), old)
        state = optimizer.state[p]
        assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
def test_constructing_with_lr_zero_warns_and_then_uses_final_lr_unscaled(foreach: bool) -> None:
    param = torch.randn(6, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="base_lr"):
        optimizer = AdaBalance([param], lr=0.0, gamma=0.1, final_lr=0.05, foreach=foreach)
    oracle = OracleAdaBalance()
    oracle.add_group([param], lr=0.0)
    generator = torch.Generator().manual_seed(3)
    for step in range(40):
        lr = 0.0 if step < 5 else 1e-3 * step  # a hand-written warmup from zero
        optimizer.param_groups[0]["lr"] = lr
        grad = torch.randn(6, generator=generator, dtype=torch.float64)
        param.grad = grad.clone()
        hyper = dict(lr=lr, betas=(0.9, 0.999), beta3=0.999, final_lr=0.05, gamma=0.1)
        oracle.step(0, [grad], {**hyper, "eps": 1e-8, "weight_decay": 0.0})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            optimizer.step()
        assert torch.isfinite(param).all()
    assert relative_error(param, oracle.params(0)[0]) <= 1e-12


@pytest.mark.filterwarnings("error")
def test_a_normal_training_step_raises_no_warning() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    for foreach in (False, True):
        optimizer = AdaBalance(
            model.parameters(), weight_decay=0.01, amsbound=True, foreach=foreach
        )
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            optimizer.step()
