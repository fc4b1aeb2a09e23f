"""The core's tensors and scalars travel by name: lists, the kernel's vector, validated values.

Each test here fails if a list or a scalar reaches the wrong role, which order-based code did
silently (a reordered tuple of list names swapped tensors; an index constant read the wrong
element of the kernel's vector).
"""

from __future__ import annotations

import importlib
import math
import random
import re

import pytest
import torch
from _oracle import OracleAdaBalance, relative_error

from adabalance_hf import AdaBalance, adabalance
from adabalance_hf.optim import _fused, _validation
from adabalance_hf.optim._multi_tensor import _multi_tensor_adabalance
from adabalance_hf.optim._single_tensor import _single_tensor_adabalance
from adabalance_hf.optim._step_scalars import HYPER, KernelScalars

HYPER_PARAMETERS = {
    "lr": 1e-2,
    "base_lr": 1e-2,
    "beta1": 0.9,
    "beta2": 0.999,
    "beta3": 0.99,
    "final_lr": 0.1,
    "gamma": 1e-2,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "maximize": False,
}
# The module, which the package's `adabalance` (the function) hides as an attribute.
adabalance_module = importlib.import_module("adabalance_hf.optim.adabalance")
LIST_NAMES = ("params", "grads", "exp_avgs", "exp_avg_sqs", "exp_avg_lrs", "max_exp_avg_sqs")


def _one_step_lists() -> dict[str, list[torch.Tensor]]:
    param = torch.randn(4, 3)
    lists = {name: [torch.zeros_like(param)] for name in LIST_NAMES}
    lists["params"], lists["grads"] = [param], [torch.randn(4, 3)]
    lists["max_exp_avg_sqs"] = []
    lists["state_steps"] = [torch.tensor(0.0)]
    return lists


# ---- (a) tensor lists by name --------------------------------------------------------------


@pytest.mark.parametrize(
    "function",
    [adabalance, _single_tensor_adabalance, _multi_tensor_adabalance, _fused._fused_adabalance],
    ids=["adabalance", "single_tensor", "multi_tensor", "fused"],
)
def test_tensor_lists_cannot_be_passed_by_position(function) -> None:
    lists = _one_step_lists()
    with pytest.raises(TypeError, match="positional argument"):
        function(*lists.values(), master_params=None)  # a keyword each of them takes


PATHS = {"per_tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
def test_functional_api_follows_the_oracle_with_lists_in_any_keyword_order(path: dict) -> None:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]
    state = {name: [torch.zeros_like(p) for p in params] for name in LIST_NAMES[2:]}
    steps = [torch.tensor(0.0) for _ in params]
    oracle = OracleAdaBalance()
    oracle.add_group(params, HYPER_PARAMETERS["lr"])
    hyper = {"betas": (0.9, 0.999), **HYPER_PARAMETERS, "amsbound": True}
    order = random.Random(0)
    for _ in range(10):
        grads = [torch.randn(p.shape, generator=generator) for p in params]
        oracle.step(0, [g.double() for g in grads], hyper)
        named = {"params": params, "grads": grads, "state_steps": steps, **state}
        keys = list(named)
        order.shuffle(keys)  # keyword order must not matter
        adabalance(**{k: named[k] for k in keys}, amsbound=True, **HYPER_PARAMETERS, **path)
    for i, reference in enumerate(oracle.groups[0].tensors):
        assert relative_error(params[i], reference.param) <= 1e-5
        assert relative_error(state["exp_avgs"][i], reference.m) <= 1e-5
        assert relative_error(state["exp_avg_sqs"][i], reference.v) <= 1e-5
        assert relative_error(state["exp_avg_lrs"][i], reference.s) <= 1e-5
        assert relative_error(state["max_exp_avg_sqs"][i], reference.v_max) <= 1e-5
        assert steps[i].item() == reference.step


def test_step_hands_each_state_tensor_to_the_list_of_its_name(monkeypatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(adabalance_module, "adabalance", lambda **kwargs: calls.append(kwargs))
    fp32 = torch.randn(3, 2, requires_grad=True)
    bf16 = torch.randn(4).bfloat16().requires_grad_()
    optimizer = AdaBalance([fp32, bf16], amsbound=True)
    fp32.grad, bf16.grad = torch.randn(3, 2), torch.randn(4).bfloat16()
    optimizer.step()
    assert [call["params"] for call in calls] == [[fp32], [bf16]]
    keys = {"exp_avgs": "exp_avg", "exp_avg_sqs": "exp_avg_sq", "exp_avg_lrs": "exp_avg_lr"}
    keys.update(max_exp_avg_sqs="max_exp_avg_sq", state_steps="step")
    for call, param in zip(calls, [fp32, bf16], strict=True):
        assert call["grads"][0] is param.grad
        for name, key in keys.items():
            assert call[name][0] is optimizer.state[param][key], name
    assert calls[0]["master_params"] is None
    assert calls[1]["master_params"][0] is optimizer.state[bf16]["master_param"]


# ---- (b) the kernel's hyper-parameter vector by name ---------------------------------------

BASE_SCALARS = KernelScalars(
    eta_scale=2e-5,
    bias_correction2_sqrt=0.3,
    lower=0.004,
    upper=0.012,
    one_minus_beta1=0.1,
    beta2=0.99,
    one_minus_beta2=0.01,
    beta3=0.9,
    eps=1e-3,
    l2=0.05,
    decay=0.98,
    grad_sign=1.0,
)


def _reference_kernel(tensors: dict[str, torch.Tensor], h: KernelScalars, amsbound: bool):
    """The kernel written from the fields' names, in float64."""
    t = {k: v.double() for k, v in tensors.items()}
    value = t["param"] * h.decay
    g = t["grad"] * h.grad_sign + h.l2 * value
    m = t["exp_avg"] + h.one_minus_beta1 * (g - t["exp_avg"])
    v = h.beta2 * t["exp_avg_sq"] + h.one_minus_beta2 * g * g
    if amsbound:
        v_max = torch.maximum(t["max_exp_avg_sq"], v)
        denom = v_max.sqrt() + h.eps
    else:
        v_max = None
        denom = v.sqrt() / h.bias_correction2_sqrt + h.eps
    s = h.beta3 * t["exp_avg_lr"] + h.eta_scale / denom
    param = value - s.clamp(h.lower, h.upper) * m
    out = {"param": param, "exp_avg": m, "exp_avg_sq": v, "exp_avg_lr": s}
    return out if v_max is None else {**out, "max_exp_avg_sq": v_max}


def _run_fused_kernel(scalars: KernelScalars, amsbound: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    n = 4096
    tensors = {
        "param": torch.randn(n, generator=generator),
        "grad": torch.randn(n, generator=generator) * 1e-2,
        "exp_avg": torch.randn(n, generator=generator) * 1e-2,
        "exp_avg_sq": torch.rand(n, generator=generator) * 1e-4,
        "exp_avg_lr": torch.rand(n, generator=generator) * 0.016,  # spans both bounds
        "max_exp_avg_sq": torch.rand(n, generator=generator) * 2e-4 if amsbound else None,
    }
    before = {k: v.clone() for k, v in tensors.items() if v is not None}
    variant = _fused.KernelVariant(
        "cpu", torch.float32, torch.float32, torch.float32, amsbound, 0, False, False
    )
    kernel_tensors = _fused.KernelTensors(**tensors, master=None)
    _fused._run_kernel(variant, [kernel_tensors], torch.tensor(scalars, dtype=torch.float32))
    expected = _reference_kernel(before, scalars, amsbound)
    for name, reference in expected.items():
        assert relative_error(tensors[name], reference) <= 1e-6, (name, scalars)
    return {name: tensors[name] for name in expected}


def test_hyper_indices_are_the_field_positions() -> None:
    assert tuple(HYPER) == tuple(range(len(KernelScalars._fields)))


@pytest.mark.parametrize("amsbound", [False, True], ids=["plain", "amsbound"])
@pytest.mark.parametrize("field", KernelScalars._fields)
def test_every_field_of_the_vector_reaches_the_kernel_in_its_role(field: str, amsbound: bool):
    if amsbound and field == "bias_correction2_sqrt":
        pytest.skip("amsbound does not bias-correct v (the reference's quirk)")
    base = _run_fused_kernel(BASE_SCALARS, amsbound)
    value = getattr(BASE_SCALARS, field)
    changed = BASE_SCALARS._replace(**{field: -value if field == "grad_sign" else 1.5 * value})
    result = _run_fused_kernel(changed, amsbound)  # follows the reference with the new value
    assert any(not torch.equal(result[name], base[name]) for name in base), field


# ---- (d) validation of what changed ----------------------------------------------------------


def test_a_step_checks_only_the_values_that_changed(monkeypatch) -> None:
    checked: list[str] = []
    check_key = _validation._check_key

    def counting(group, key, tensors):
        checked.append(key)
        check_key(group, key, tensors)

    monkeypatch.setattr(_validation, "_check_key", counting)
    param = torch.zeros(3, requires_grad=True)
    optimizer = AdaBalance([{"params": [param]}, {"params": [torch.zeros(2)]}])
    param.grad = torch.ones(3)
    optimizer.step()
    checked.clear()
    optimizer.step()
    assert checked == []
    optimizer.param_groups[1]["lr"] = 5e-4  # a scheduler's step
    optimizer.step()
    assert checked == ["lr"]


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        (lambda group: group["betas"].__setitem__(0, 1.0), "Invalid betas[0]: 1.0"),
        (lambda group: group.__setitem__("amsbound", 1), "Invalid amsbound: 1"),
        (lambda group: group.__setitem__("lr", math.nan), "Invalid lr: nan"),
    ],
    ids=["list_element_in_place", "int_for_a_bool", "nan"],
)
def test_a_change_after_valid_steps_is_still_caught(change, shown) -> None:
    param = torch.zeros(3, requires_grad=True)
    optimizer = AdaBalance([param], betas=[0.9, 0.999], amsbound=True)
    param.grad = torch.ones(3)
    optimizer.step()
    change(optimizer.param_groups[0])
    before = param.detach().clone()
    for _ in range(2):  # and again at the next step: an invalid value is never recorded
        with pytest.raises(ValueError, match=re.escape(f"nothing was updated. {shown}")):
            optimizer.step()
    assert torch.equal(param.detach(), before)
