"""``load_state_dict`` hooks: torch's contract, with AdaBalance's checks and fp32 state between.

``torch.optim.Optimizer.load_state_dict`` runs the pre-hooks first (each may return the state dict
to load instead), then loads, then runs the post-hooks. AdaBalance checks the state dict and keeps
fp32 state for bf16/fp16 parameters: the checks apply to what the pre-hooks returned, and the
post-hooks see the final state.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _oracle import OracleAdaBalance, relative_error
from torch import nn

from adabalance_hf.optim import AdaBalance, StateDictMismatchError

# Bounds off (gamma=0) and a fast step-size average: the update is exp_avg_lr * exp_avg, so a
# wrong exp_avg_lr shows in the parameters at once.
_HYPER = dict(
    lr=1e-2, betas=(0.9, 0.999), beta3=0.5, final_lr=0.1, gamma=0.0, eps=1e-8, weight_decay=0.0
)


def _grads(params: list[torch.Tensor], steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(p.shape, generator=generator).to(p.dtype) for p in params]
        for _ in range(steps)
    ]


def _run(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads) -> None:
    for step_grads in grads:
        for param, grad in zip(params, step_grads, strict=True):
            param.grad = grad.clone()
        optimizer.step()


def _bf16_and_fp32_params() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(4, 3).bfloat16().requires_grad_(), torch.randn(5).requires_grad_()]


def test_pre_hook_that_adds_a_missing_exp_avg_lr_is_honoured() -> None:
    torch.manual_seed(0)
    params = [torch.randn(4, 3).requires_grad_(), torch.randn(5).requires_grad_()]
    grads = _grads(params, steps=7)
    oracle = OracleAdaBalance()
    oracle.add_group(params, lr=_HYPER["lr"])

    saving = AdaBalance(params, **_HYPER)
    _run(saving, params, grads[:3])
    for step_grads in grads[:3]:
        oracle.step(0, step_grads, _HYPER)
    old = copy.deepcopy(saving.state_dict())
    for param_state in old["state"].values():
        del param_state["exp_avg_lr"]  # as saved by a version without the step-size average
    recovered = [t.s.to(torch.float32) for t in oracle.groups[0].tensors]

    def migrate(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
        state = {
            key: {**value, "exp_avg_lr": recovered[key].clone()}
            for key, value in state_dict["state"].items()
        }
        return {**state_dict, "state": state}

    loading = AdaBalance(params, **_HYPER)
    loading.register_load_state_dict_pre_hook(migrate)
    loading.load_state_dict(old)
    _run(loading, params, grads[3:])
    for step_grads in grads[3:]:
        oracle.step(0, step_grads, _HYPER)

    for param, expected in zip(params, oracle.params(0), strict=True):
        assert relative_error(param, expected) <= 1e-5
    for param, tensor in zip(params, oracle.groups[0].tensors, strict=True):
        assert relative_error(loading.state[param]["exp_avg_lr"], tensor.s) <= 1e-5


def test_state_dict_returned_by_a_pre_hook_is_what_a_bf16_parameter_keeps_in_fp32() -> None:
    params = _bf16_and_fp32_params()
    saving = AdaBalance(params, lr=1e-2)
    _run(saving, params, _grads(params, steps=3))
    saved = saving.state_dict()
    original = copy.deepcopy(saved)
    expected = {key: value["exp_avg"] / 3 for key, value in original["state"].items()}
    assert not torch.equal(expected[0], expected[0].bfloat16().float())  # bf16 would round it

    def rescale(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
        rescaled = copy.deepcopy(state_dict)
        for value in rescaled["state"].values():
            value["exp_avg"] /= 3
        return rescaled

    loading = AdaBalance(params, lr=1e-2)
    loading.register_load_state_dict_pre_hook(rescale)
    loading.load_state_dict(saved)

    for key, param in enumerate(params):
        state = loading.state[param]
        assert state["exp_avg"].dtype == torch.float32
        assert torch.equal(state["exp_avg"], expected[key])
        assert torch.equal(state["exp_avg_sq"], original["state"][key]["exp_avg_sq"])
    assert torch.equal(
        loading.state[params[0]]["master_param"], original["state"][0]["master_param"]
    )
    for key, value in saved["state"][0].items():  # the hook left the caller's dict alone
        assert torch.equal(value, original["state"][0][key]), key


def test_post_hook_sees_the_final_fp32_state_master_copy_and_cast_steps() -> None:
    params = _bf16_and_fp32_params()
    saving = AdaBalance(params, lr=1e-2, amsbound=True)
    grads = _grads(params, steps=5)
    _run(saving, params, grads[:2])
    early = copy.deepcopy(saving.state_dict())
    _run(saving, params, grads[2:])
    late = copy.deepcopy(saving.state_dict())
    for value in late["state"].values():
        value["step"] = torch.tensor(5)  # an int64 step, as another loader may leave it
    adamw = torch.optim.AdamW(params)
    _run(adamw, params, grads[:1])

    seen: list[dict[int, dict[str, torch.Tensor]]] = []

    def record(optimizer: torch.optim.Optimizer) -> None:
        states = [optimizer.state[p] for p in optimizer.param_groups[0]["params"]]
        seen.append({k: {key: v.clone() for key, v in s.items()} for k, s in enumerate(states)})

    loading = AdaBalance(params, lr=1e-2, amsbound=True)
    loading.register_load_state_dict_post_hook(record)
    loading.load_state_dict(early)
    with pytest.raises(ValueError, match="not an AdaBalance state dict"):
        loading.load_state_dict(adamw.state_dict())  # fails before loading: no post-hook
    loading.load_state_dict(late)

    assert len(seen) == 2
    bf16_state = seen[-1][0]
    assert "master_param" in bf16_state
    for name in ("exp_avg", "exp_avg_sq", "exp_avg_lr", "max_exp_avg_sq", "master_param"):
        assert bf16_state[name].dtype == torch.float32, name
        assert torch.equal(bf16_state[name], late["state"][0][name]), name
    for key, param in enumerate(params):
        final = loading.state[param]
        assert set(seen[-1][key]) == set(final)
        for name, value in final.items():
            assert seen[-1][key][name].dtype == value.dtype, name
            assert torch.equal(seen[-1][key][name], value), name
        step = seen[-1][key]["step"]
        assert step.dtype == torch.float32 and step.dim() == 0 and step.item() == 5.0


def _hook_events(make_optimizer, migrated_key: str) -> list[str]:
    """Register hooks in a fixed pattern, load twice, return what ran in what order."""
    torch.manual_seed(0)
    params = [torch.randn(4, 3).requires_grad_(), torch.randn(5).requires_grad_()]
    saving = make_optimizer(params)
    _run(saving, params, _grads(params, steps=2))
    complete = copy.deepcopy(saving.state_dict())
    incomplete = copy.deepcopy(complete)
    del incomplete["state"][0][migrated_key]
    events: list[str] = []
    passed: list[dict] = []

    def pre(name: str, migrate: bool = False):
        def hook(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict | None:
            shallow = state_dict is not passed[-1] and state_dict.keys() == passed[-1].keys()
            shallow &= all(state_dict[key] is value for key, value in passed[-1].items())
            events.append(f"pre {name} shallow_copy={shallow}")
            return {**state_dict, "state": copy.deepcopy(complete["state"])} if migrate else None

        return hook

    def post(name: str):
        def hook(optimizer: torch.optim.Optimizer) -> None:
            loaded = migrated_key in optimizer.state[optimizer.param_groups[0]["params"][0]]
            events.append(f"post {name} migrated={loaded}")

        return hook

    loading = make_optimizer(params)
    loading.register_load_state_dict_pre_hook(pre("a"))
    loading.register_load_state_dict_pre_hook(pre("b"), prepend=True)
    loading.register_load_state_dict_post_hook(post("x"))
    migrate = loading.register_load_state_dict_pre_hook(pre("c", migrate=True))
    loading.register_load_state_dict_post_hook(post("y"), prepend=True)
    for state_dict in (incomplete, complete):
        passed.append(state_dict)
        loading.load_state_dict(state_dict)
        migrate.remove()  # the second load runs without the migrating hook
    return events


def test_hook_order_and_call_counts_are_those_of_torch_adam() -> None:
    adam = _hook_events(torch.optim.Adam, "exp_avg_sq")
    adabalance = _hook_events(AdaBalance, "exp_avg_lr")
    assert adabalance == adam
    assert adabalance == [
        "pre b shallow_copy=True",
        "pre a shallow_copy=True",
        "pre c shallow_copy=True",
        "post y migrated=True",
        "post x migrated=True",
        "pre b shallow_copy=True",
        "pre a shallow_copy=True",
        "post y migrated=True",
        "post x migrated=True",
    ]


def test_state_dict_of_another_optimizer_raises_state_dict_mismatch_error() -> None:
    assert issubclass(StateDictMismatchError, ValueError)
    model = nn.Linear(4, 2)
    adamw = torch.optim.AdamW(model.parameters())
    _run(adamw, list(model.parameters()), _grads(list(model.parameters()), steps=1))
    optimizer = AdaBalance(model.parameters())
    with pytest.raises(StateDictMismatchError, match="not an AdaBalance state dict") as raised:
        optimizer.load_state_dict(adamw.state_dict())
    assert isinstance(raised.value, ValueError)
    assert "lacks ['beta3', 'final_lr', 'gamma']" in str(raised.value)

    _run(optimizer, list(model.parameters()), _grads(list(model.parameters()), steps=1))
    without_average = copy.deepcopy(optimizer.state_dict())
    del without_average["state"][0]["exp_avg_lr"]
    with pytest.raises(StateDictMismatchError, match=r"lacks \['exp_avg_lr'\]"):
        AdaBalance(model.parameters()).load_state_dict(without_average)
    # Another model is another kind of error: the optimizer class is right.
    with pytest.raises(ValueError, match="shape") as raised:
        AdaBalance(nn.Linear(4, 3).parameters()).load_state_dict(optimizer.state_dict())
    assert not isinstance(raised.value, StateDictMismatchError)
