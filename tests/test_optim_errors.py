"""Bad input reaches the user as a clear error that names the input and the fix, raised before
anything changes (hyper-parameters, parameters, gradients, state dicts)."""

from __future__ import annotations

import copy
import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from adabalance_hf import AdaBalance
from adabalance_hf.optim._param_checks import check_grads_before_step

INVALID = [
    ("lr", {"lr": -1e-3}, "-0.001"),
    ("lr", {"lr": math.nan}, "nan"),
    ("lr", {"lr": math.inf}, "inf"),
    ("lr", {"lr": "1e-3"}, "'1e-3' is a str"),
    ("lr", {"lr": True}, "True (type bool)"),
    ("lr", {"lr": None}, "None (type NoneType)"),
    ("lr", {"lr": torch.tensor([1e-3, 1e-3])}, "tensor([0.0010, 0.0010])"),
    ("eps", {"eps": -1e-8}, "-1e-08"),
    ("eps", {"eps": math.inf}, "inf"),
    ("betas[0]", {"betas": (1.0, 0.999)}, "1.0"),
    ("betas[0]", {"betas": (math.nan, 0.999)}, "nan"),
    ("betas[0]", {"betas": ("0.9", 0.999)}, "'0.9' is a str"),
    ("betas[1]", {"betas": (0.9, -0.1)}, "-0.1"),
    ("betas", {"betas": (0.9,)}, "(0.9,)"),
    ("betas", {"betas": (0.9, 0.99, 0.9)}, "(0.9, 0.99, 0.9)"),
    ("betas", {"betas": 0.9}, "0.9"),
    ("betas", {"betas": "0.9,0.999"}, "'0.9,0.999'"),
    ("beta3", {"beta3": 1.0}, "1.0"),
    ("beta3", {"beta3": -0.5}, "-0.5"),
    ("final_lr", {"final_lr": -0.1}, "-0.1"),
    ("final_lr", {"final_lr": math.inf}, "inf"),
    ("gamma", {"gamma": 1.0}, "1.0"),
    ("gamma", {"gamma": -1e-3}, "-0.001"),
    ("gamma", {"gamma": math.nan}, "nan"),
    ("weight_decay", {"weight_decay": -0.01}, "-0.01"),
    ("weight_decay", {"weight_decay": "0.01"}, "'0.01' is a str"),
    ("amsbound", {"amsbound": "yes"}, "'yes'"),
    ("maximize", {"maximize": 1}, "1 (type int)"),
    ("master_weights", {"master_weights": "true"}, "'true'"),
    ("foreach", {"foreach": "auto"}, "'auto'"),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "shown_value"), INVALID, ids=[f"{n}={v}" for n, _, v in INVALID]
)
def test_invalid_hyperparameter_names_argument_and_value(name, kwargs, shown_value) -> None:
    with pytest.raises(ValueError, match=re.escape(f"Invalid {name}: {shown_value}")):
        AdaBalance([torch.zeros(2, requires_grad=True)], **kwargs)


def test_numeric_string_from_a_config_file_names_the_float_and_the_yaml_fix() -> None:
    with pytest.raises(ValueError) as error:
        AdaBalance([torch.zeros(2, requires_grad=True)], lr="1e-3")
    assert "lr=0.001" in str(error.value) and "write 1.0e-3" in str(error.value)
    with pytest.raises(ValueError, match=r"'abc' is a str, not a number; pass a float"):
        AdaBalance([torch.zeros(2, requires_grad=True)], final_lr="abc")


def test_invalid_hyperparameter_in_a_later_group_leaves_the_optimizer_unchanged() -> None:
    optimizer = AdaBalance([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match=re.escape("param group 1: Invalid gamma: 2.0")):
        optimizer.add_param_group({"params": [torch.zeros(3, requires_grad=True)], "gamma": 2.0})
    assert len(optimizer.param_groups) == 1
    with pytest.raises(ValueError, match=re.escape("param group 1: Invalid lr: '0.1' is a str")):
        AdaBalance([{"params": [torch.zeros(1, requires_grad=True)]}, {"params": [], "lr": "0.1"}])


def _two_groups_with_grads(**kwargs):
    torch.manual_seed(0)
    first, second = torch.randn(3, requires_grad=True), torch.randn(4, requires_grad=True)
    optimizer = AdaBalance([{"params": [first]}, {"params": [second]}], **kwargs)
    first.grad, second.grad = torch.randn(3), torch.randn(4)
    return optimizer, first, second


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("lr", math.nan, "Invalid lr: nan"),
        ("lr", -1e-3, "Invalid lr: -0.001"),
        ("lr", "0.1", "Invalid lr: '0.1' is a str"),
        ("betas", (1.0, 0.999), "Invalid betas[0]: 1.0"),
        ("eps", -1.0, "Invalid eps: -1.0"),
        ("gamma", 1.0, "Invalid gamma: 1.0"),
        ("weight_decay", math.inf, "Invalid weight_decay: inf"),
        ("amsbound", "no", "Invalid amsbound: 'no'"),
    ],
)
def test_bad_value_written_into_a_group_after_construction_fails_before_any_update(
    key, value, shown
) -> None:
    optimizer, first, second = _two_groups_with_grads(foreach=False)
    before = [first.detach().clone(), second.detach().clone()]
    optimizer.param_groups[1][key] = value
    with pytest.raises(ValueError, match=re.escape(shown)) as error:
        optimizer.step()
    assert "param group 1" in str(error.value) and "nothing was updated" in str(error.value)
    assert torch.equal(first, before[0]) and torch.equal(second, before[1])
    assert len(optimizer.state) == 0


def test_tensor_lr_set_after_construction_is_not_read_by_the_check() -> None:
    optimizer, first, _ = _two_groups_with_grads()
    optimizer.param_groups[0]["lr"] = torch.tensor(1e-2)  # a scheduler with tensor lr
    optimizer.step()
    assert torch.isfinite(first).all()


# ---- parameters --------------------------------------------------------------------------------


def test_empty_parameter_list_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"empty parameter list.*model\.parameters\(\)"):
        AdaBalance([])
    params = nn.Linear(2, 2).parameters()
    list(params)  # a generator consumed once already
    with pytest.raises(ValueError, match="consumed only once"):
        AdaBalance(params)
    with pytest.raises(TypeError, match=r"wrap it in a list: AdaBalance\(\[tensor\]\)"):
        AdaBalance(torch.zeros(2, requires_grad=True))
    with pytest.raises(TypeError, match=r"parameter 1 of param group 0 is a str"):
        AdaBalance([torch.zeros(2, requires_grad=True), "weight"])


def test_empty_param_group_and_frozen_parameters_are_accepted_as_in_torch() -> None:
    weight, frozen = torch.ones(2, requires_grad=True), torch.ones(2)
    optimizer = AdaBalance([{"params": []}, {"params": [weight, frozen]}])
    weight.grad = torch.ones(2)
    optimizer.step()
    assert (weight < 1).all() and torch.equal(frozen, torch.ones(2))
    AdaBalance([{"params": []}, {"params": [weight, frozen]}]).load_state_dict(
        optimizer.state_dict()
    )


def test_duplicate_parameters_name_both_positions() -> None:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    same = r"parameter 2 of param group 0 is the same tensor as parameter 0.*stepped twice"
    with pytest.raises(ValueError, match=same):
        AdaBalance([a, b, a])
    with pytest.raises(ValueError, match="parameter 0 of param group 1 is already parameter 1"):
        AdaBalance([{"params": [b, a]}, {"params": [a]}])
    optimizer = AdaBalance([a])
    with pytest.raises(ValueError, match="one param group only"):
        optimizer.add_param_group({"params": [b, a]})
    assert len(optimizer.param_groups) == 1


def test_non_leaf_tensor_names_the_fix() -> None:
    leaf = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"non-leaf tensor: parameter 0 .*requires_grad=True"):
        AdaBalance([leaf * 2])


def test_mixed_devices_in_one_group_name_both_devices() -> None:
    cpu, meta = torch.zeros(2, requires_grad=True), torch.zeros(2, device="meta").requires_grad_()
    with pytest.raises(ValueError, match=r"parameter 0 is on cpu and parameter 1 on meta.*one"):
        AdaBalance([cpu, meta])
    optimizer = AdaBalance([cpu])
    with pytest.raises(ValueError, match="param group 1 mixes devices"):
        optimizer.add_param_group({"params": [torch.ones(1, requires_grad=True), meta]})
    assert len(optimizer.param_groups) == 1
    AdaBalance([cpu, torch.zeros(2, device="meta")])  # frozen (offloaded) tensors do not count
    AdaBalance([{"params": [cpu]}, {"params": [meta]}])  # one device per group


def test_complex_parameters_take_foreach_or_per_tensor_not_fused() -> None:
    # Complex parameters are optimized as their real view (see test_optim_conventions).
    param = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"fused=True\) needs floating-point.*foreach=True"):
        AdaBalance([param], fused=True)


# ---- gradients: checked for every group before the first parameter moves -----------------------

PATHS = [{"foreach": False}, {"foreach": True}, {"fused": True}]


def _sparse_grad(param: torch.Tensor) -> None:
    param.grad = torch.sparse_coo_tensor([[0]], [1.0], (4,), check_invariants=True)


def _grad_of_other_shape(param: torch.Tensor) -> None:
    param.grad = torch.ones(4)
    param.grad.data = torch.ones(5)  # .data bypasses the .grad setter's shape check


def _grad_of_other_dtype(param: torch.Tensor) -> None:
    param.grad = torch.ones(4)
    param.grad.data = torch.ones(4, dtype=torch.float64)


BAD_GRADS = [
    (_sparse_grad, "does not support sparse gradients: parameter 1 of param group 1"),
    (_grad_of_other_shape, "parameter 1 of param group 1 has shape (5,) but the parameter"),
    (_grad_of_other_dtype, "parameter 1 of param group 1 is torch.float64 but the parameter"),
]


@pytest.mark.parametrize("path", PATHS, ids=["per_tensor", "foreach", "fused"])
@pytest.mark.parametrize(("make_bad", "message"), BAD_GRADS, ids=["sparse", "shape", "dtype"])
def test_bad_gradient_of_the_last_parameter_fails_before_the_first_moves(
    path, make_bad, message
) -> None:
    torch.manual_seed(0)
    params = [torch.randn(4, requires_grad=True) for _ in range(3)]
    optimizer = AdaBalance([{"params": params[:1]}, {"params": params[1:]}], **path)
    for param in params:
        param.grad = torch.randn(4)
    make_bad(params[2])
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=re.escape(message)) as error:
        optimizer.step()
    assert "Nothing was updated" in str(error.value)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert len(optimizer.state) == 0


def test_gradient_of_an_integer_parameter_is_an_error() -> None:
    param = torch.zeros(2, dtype=torch.long)
    param.grad = torch.ones(2, dtype=torch.long)
    with pytest.raises(RuntimeError, match=r"torch\.int64 parameter; AdaBalance optimizes"):
        AdaBalance([param]).step()


def test_gradient_on_another_device_is_an_error() -> None:
    # torch's .grad setter refuses another device type; the check still covers what gets
    # through (cuda:1 gradients of cuda:0 parameters). Stand-ins make one on a CPU machine.
    param = SimpleNamespace(
        shape=torch.Size([2]),
        dtype=torch.float32,
        device=torch.device("cpu"),
        grad=torch.ones(2, device="meta"),
    )
    with pytest.raises(RuntimeError, match="is on meta but the parameter is on cpu; move it"):
        check_grads_before_step([{"params": [param]}])


# ---- state dicts -------------------------------------------------------------------------------


def _stepped(optimizer_cls, model, **kwargs):
    optimizer = optimizer_cls(model.parameters(), **kwargs)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return optimizer


def _snapshot(optimizer: torch.optim.Optimizer) -> dict:
    return copy.deepcopy(optimizer.state_dict())


def _assert_unchanged(optimizer: torch.optim.Optimizer, snapshot: dict) -> None:
    now = optimizer.state_dict()
    assert now["param_groups"] == snapshot["param_groups"]
    assert now["state"].keys() == snapshot["state"].keys()
    for key, entries in snapshot["state"].items():
        for name, value in entries.items():
            assert torch.equal(now["state"][key][name], value), (key, name)


@pytest.mark.parametrize(
    ("other", "missing"),
    [
        (lambda p: torch.optim.Adam(p), "['beta3', 'final_lr', 'gamma']"),
        (lambda p: torch.optim.AdamW(p), "['beta3', 'final_lr', 'gamma']"),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "['betas', 'beta3', 'final_lr'"),
        (lambda p: torch.optim.SGD(p, lr=0.1), "['betas', 'beta3', 'final_lr'"),  # no state
    ],
    ids=["Adam", "AdamW", "SGD_momentum", "SGD"],
)
def test_state_dict_of_another_optimizer_is_rejected_with_missing_keys(other, missing) -> None:
    model = nn.Linear(4, 2)
    saved = _stepped(lambda params: other(params), model).state_dict()
    optimizer = _stepped(AdaBalance, model)
    snapshot = _snapshot(optimizer)
    with pytest.raises(ValueError, match=re.escape(missing) + ".*not an AdaBalance state dict"):
        optimizer.load_state_dict(saved)
    _assert_unchanged(optimizer, snapshot)


def test_state_dict_of_another_model_is_rejected_with_shapes() -> None:
    saved = _stepped(AdaBalance, nn.Linear(4, 2)).state_dict()
    other = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"shape \(2, 4\) but the parameter has shape \(3, 4\)"):
        AdaBalance(other.parameters()).load_state_dict(saved)


def test_state_dict_with_other_group_structure_is_rejected() -> None:
    model = nn.Linear(4, 2)
    saved = _stepped(AdaBalance, model).state_dict()
    split = AdaBalance([{"params": [model.weight]}, {"params": [model.bias]}])
    with pytest.raises(ValueError, match="1 param groups, this optimizer has 2"):
        split.load_state_dict(saved)
    merged = AdaBalance([{"params": [model.weight]}, {"params": []}])
    saved_split = _stepped(AdaBalance, nn.Linear(4, 2)).state_dict()
    saved_split["param_groups"].append({**saved_split["param_groups"][0], "params": []})
    with pytest.raises(ValueError, match="param group 0 has 2 parameters in the state dict"):
        merged.load_state_dict(saved_split)


def _state0(state_dict: dict) -> dict:
    return state_dict["state"][0]


BAD_STATE_DICTS = [
    ("no_state", lambda sd: sd.pop("state"), "expects a dict with 'state' and 'param_groups'"),
    ("no_groups", lambda sd: sd.pop("param_groups"), "got ['state']; if the checkpoint holds"),
    ("group_without_params", lambda sd: sd["param_groups"][0].pop("params"), "no 'params' list"),
    ("groups_not_list", lambda sd: sd.update(param_groups={}), "must be a list of dicts"),
    ("step_missing", lambda sd: _state0(sd).pop("step"), "lacks ['step']"),
    ("step_negative", lambda sd: _state0(sd).update(step=torch.tensor(-1.0)), "whole number"),
    ("step_fraction", lambda sd: _state0(sd).update(step=torch.tensor(1.5)), "is tensor(1.5000)"),
    ("step_nan", lambda sd: _state0(sd).update(step=math.nan), "'step' of parameter 0"),
    ("step_str", lambda sd: _state0(sd).update(step="3"), "is '3'; it must be a whole number"),
    ("step_meta", lambda sd: _state0(sd).update(step=torch.tensor(1.0, device="meta")), "meta"),
    ("not_tensor", lambda sd: _state0(sd).update(exp_avg=[0.0]), "is a list, not a tensor"),
    ("int_state", lambda sd: _state0(sd).update(exp_avg=torch.zeros(2, 4, dtype=torch.int64)),
     "is torch.int64; AdaBalance state is floating point"),
    ("meta_state", lambda sd: _state0(sd).update(exp_avg_sq=torch.zeros(2, 4, device="meta")),
     "'exp_avg_sq' of parameter 0 of param group 0 (state key 0) is on the meta device"),
    ("complex_state", lambda sd: _state0(sd).update(exp_avg=torch.zeros(2, 4).to(torch.cfloat)),
     "is complex (torch.complex64) but the parameter is torch.float32"),
    ("nan_state", lambda sd: _state0(sd)["exp_avg_lr"].view(-1)[3].fill_(math.nan),
     "'exp_avg_lr' of parameter 0 of param group 0 (state key 0) holds 1 NaN value(s) of 8"),
    ("master_shape", lambda sd: _state0(sd).update(master_param=torch.zeros(3)), "shape (3,)"),
    ("group_lr", lambda sd: sd["param_groups"][0].update(lr=-1.0),
     "param group 0 of the state dict: Invalid lr: -1.0"),
    ("group_betas", lambda sd: sd["param_groups"][0].update(betas=(1.0, 0.9)), "betas[0]: 1.0"),
    ("group_flag", lambda sd: sd["param_groups"][0].update(amsbound="True"), "amsbound: 'True'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "message"), [c[1:] for c in BAD_STATE_DICTS], ids=[c[0] for c in BAD_STATE_DICTS]
)
def test_bad_state_dict_fails_and_leaves_the_optimizer_exactly_as_it_was(mutate, message) -> None:
    model = nn.Linear(4, 2)
    saved = copy.deepcopy(_stepped(AdaBalance, model, amsbound=True).state_dict())
    mutate(saved)
    optimizer = _stepped(AdaBalance, model, lr=5e-3)
    snapshot = _snapshot(optimizer)
    with pytest.raises(ValueError, match=re.escape(message)):
        optimizer.load_state_dict(saved)
    _assert_unchanged(optimizer, snapshot)


def test_state_of_other_dtypes_is_cast_to_what_the_optimizer_needs() -> None:
    model = nn.Linear(4, 2)
    saved = _stepped(AdaBalance, model).state_dict()
    for dtype in (torch.float64, torch.bfloat16):
        cast = copy.deepcopy(saved)
        for entries in cast["state"].values():
            entries.update({k: v.to(dtype) for k, v in entries.items() if k != "step"})
            entries["step"] = torch.tensor(1, dtype=torch.int64)  # an int step tensor
        for path in ({"foreach": False}, {"foreach": True}):
            optimizer = AdaBalance(model.parameters(), **path)
            optimizer.load_state_dict(cast)
            state = optimizer.state[model.weight]
            assert {v.dtype for v in state.values()} == {torch.float32}
            optimizer.step()
            assert state["step"].item() == 2.0

    # bf16 parameters: fp64 state (master weights included) is loaded as fp32, not bf16
    low = copy.deepcopy(model).bfloat16()
    low(torch.ones(2, 4, dtype=torch.bfloat16)).sum().backward()
    optimizer = AdaBalance(low.parameters())
    optimizer.step()
    wide = copy.deepcopy(optimizer.state_dict())
    for entries in wide["state"].values():
        entries.update({k: v.double() for k, v in entries.items() if k != "step"})
    fresh = AdaBalance(low.parameters())
    fresh.load_state_dict(wide)
    assert {v.dtype for v in fresh.state[low.weight].values()} == {torch.float32}
    assert set(fresh.state[low.weight]) >= {"master_param", "exp_avg"}


def test_infinite_state_is_accepted_because_eps_0_can_produce_it() -> None:
    # eps=0 and a zero gradient give eta = lr / 0 = inf, so exp_avg_lr = inf is a real state.
    param = torch.zeros(2, requires_grad=True)
    optimizer = AdaBalance([param], eps=0.0)
    param.grad = torch.tensor([0.0, 1.0])
    optimizer.step()
    assert math.isinf(optimizer.state[param]["exp_avg_lr"][0])
    AdaBalance([param], eps=0.0).load_state_dict(optimizer.state_dict())
