"""bf16/fp16 parameters: fp32 master weights and state, state dicts, GradScaler, rounding."""

from __future__ import annotations

import pytest
import torch
from _oracle import OracleAdaBalance, relative_error
from _parity import run_parity
from torch import nn

from adabalance_hf import AdaBalance

PATHS = {
    "per_tensor": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "config",
    [{}, {"amsbound": True, "weight_decay": 0.05, "decoupled_weight_decay": True}],
    ids=["defaults", "amsbound_decoupled"],
)
def test_master_weights_follow_the_oracle(config: dict, dtype: torch.dtype, path: dict) -> None:
    errors = run_parity({**config, **path}, dtype, steps=300, compare_master=True)
    assert max(errors.values()) <= 1e-5, errors


def _bf16_params_with_state(**kwargs) -> tuple[list[torch.Tensor], AdaBalance]:
    torch.manual_seed(0)
    params = [torch.randn(4, 3).bfloat16().requires_grad_(), torch.randn(5).requires_grad_()]
    optimizer = AdaBalance(params, lr=1e-2, amsbound=True, **kwargs)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    return params, optimizer


def test_state_of_bf16_params_is_fp32_and_stays_fp32_through_load() -> None:
    params, optimizer = _bf16_params_with_state()
    state = optimizer.state[params[0]]
    assert {k for k, v in state.items() if v.dtype == torch.float32} == {
        "exp_avg",
        "exp_avg_sq",
        "exp_avg_lr",
        "max_exp_avg_sq",
        "master_param",
        "step",
    }
    saved = optimizer.state_dict()
    fresh = AdaBalance(params, lr=1e-2, amsbound=True)
    fresh.load_state_dict(saved)
    for key, value in fresh.state[params[0]].items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value, state[key]), key
    assert "master_param" not in fresh.state[params[1]]  # fp32 params need none


def test_state_dict_without_master_weights_initialises_them_from_params() -> None:
    params, optimizer = _bf16_params_with_state(master_weights=False)
    assert "master_param" not in optimizer.state[params[0]]
    saved = optimizer.state_dict()
    for group in saved["param_groups"]:
        del group["master_weights"]  # as saved by a version without master weights
    with_master = AdaBalance(params, lr=1e-2, amsbound=True, master_weights=False)
    with_master.load_state_dict(saved)
    assert with_master.param_groups[0]["master_weights"] is True  # the default fills in
    params[0].grad = torch.zeros_like(params[0])
    params[1].grad = torch.zeros_like(params[1])
    before = params[0].detach().float().clone()
    with_master.step()
    master = with_master.state[params[0]]["master_param"]
    # The master copy started from the bf16 values, then took one (small) step.
    assert master.dtype == torch.float32
    assert (master - before).abs().max() < 0.05
    assert torch.equal(params[0].detach(), master.bfloat16())


@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
def test_fp16_params_train_under_grad_scaler_and_inf_steps_change_nothing(path: dict) -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 4).half()
    optimizer = AdaBalance(model.parameters(), lr=1e-3, **path)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    inputs = torch.randn(16, 8).half()

    def scaled_step(poison: bool) -> None:
        optimizer.zero_grad()
        loss = model(inputs).float().pow(2).mean()
        scaler.scale(loss).backward()
        if poison:
            model.weight.grad[0, 0] = float("inf")
        scaler.step(optimizer)
        scaler.update()

    scaled_step(poison=False)
    state_before = {k: v.clone() for k, v in optimizer.state[model.weight].items()}
    weights_before = model.weight.detach().clone()
    scale_before = scaler.get_scale()
    scaled_step(poison=True)
    assert scaler.get_scale() < scale_before
    assert torch.equal(model.weight.detach(), weights_before)
    for key, value in optimizer.state[model.weight].items():
        assert torch.equal(value, state_before[key]), key
    scaled_step(poison=False)
    assert optimizer.state[model.weight]["step"].item() == 2.0
    assert not torch.equal(model.weight.detach(), weights_before)


def test_grad_scaler_unscales_exactly_like_an_unscaled_step() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 4)
    grad = torch.randn(6, 4)
    scaled = weight.clone().requires_grad_()
    plain = weight.clone().requires_grad_()
    opt_scaled = AdaBalance([scaled], lr=1e-2, gamma=0.1)
    opt_plain = AdaBalance([plain], lr=1e-2, gamma=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    for _ in range(5):
        scaler.scale((scaled * grad).sum()).backward()
        scaler.step(opt_scaled)
        scaler.update()
        opt_scaled.zero_grad()
        plain.grad = grad.clone()
        opt_plain.step()
    torch.testing.assert_close(scaled, plain, rtol=0, atol=0)


def test_bf16_stochastic_rounding_is_unbiased() -> None:
    from adabalance_hf.optim._precision import stochastic_round_to_bf16

    torch.manual_seed(0)
    values = torch.full((200_000,), 1.0 + 2.0**-10)  # a quarter of the way between bf16 values
    rounded = stochastic_round_to_bf16(values).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    assert rounded.mean().item() == pytest.approx(1.0 + 2.0**-10, rel=2e-5)
    assert values.bfloat16().float().mean().item() == 1.0  # round-to-nearest loses it


@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
def test_stochastic_rounding_lets_small_updates_survive_without_master(path: dict) -> None:
    def distance_moved(dtype: torch.dtype, stochastic: bool) -> float:
        torch.manual_seed(0)
        param = torch.ones(4096, dtype=dtype, requires_grad=True)
        optimizer = AdaBalance(
            [param],
            lr=1e-4,
            gamma=0.0,
            beta3=0.9,
            master_weights=False,
            bf16_stochastic_round=stochastic,
            **path,
        )
        for _ in range(100):
            param.grad = torch.full_like(param, 1e-3)
            optimizer.step()
        return (1.0 - param.detach().float().mean()).item()

    reference = distance_moved(torch.float32, stochastic=False)
    assert reference > 2.0**-8  # it moves by more than one bf16 spacing in all...
    # ...but each step (about lr) is below half a spacing, so round-to-nearest loses every one.
    assert distance_moved(torch.bfloat16, stochastic=False) == 0.0
    assert distance_moved(torch.bfloat16, stochastic=True) == pytest.approx(reference, rel=0.05)


def _bf16_param_with_fp32_grads() -> torch.Tensor:
    param = torch.randn(6, 5, generator=torch.Generator().manual_seed(1)).bfloat16()
    param.requires_grad_()
    try:
        param.grad_dtype = torch.float32  # torch >= 2.10: gradients may differ from the param
    except (AttributeError, RuntimeError, TypeError):
        pytest.skip("this torch has no Tensor.grad_dtype")
    return param


@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
def test_fp32_gradients_of_bf16_params_through_grad_dtype(path: dict) -> None:
    # The fused kernel once failed to compile here: dynamo rejected the fp32 gradient of a bf16
    # parameter whose grad_dtype said fp32, and the error blamed a missing C++ compiler.
    param = _bf16_param_with_fp32_grads()
    hyper = {"lr": 1e-2, "betas": (0.9, 0.999), "beta3": 0.99, "final_lr": 0.1, "gamma": 1e-3,
             "eps": 1e-8, "weight_decay": 0.0}  # fmt: skip
    optimizer = AdaBalance([param], **hyper, **path)
    oracle = OracleAdaBalance()
    oracle.add_group([param], hyper["lr"])
    generator = torch.Generator().manual_seed(2)
    for _ in range(20):
        grad = torch.randn(6, 5, generator=generator) * 1e-3  # below bf16's resolution of p
        param.grad = grad
        oracle.step(0, [grad.double()], hyper)
        optimizer.step()
    master = optimizer.state[param]["master_param"]
    assert relative_error(master, oracle.params(0)[0]) <= 1e-5
    assert torch.equal(param.detach(), master.bfloat16())
