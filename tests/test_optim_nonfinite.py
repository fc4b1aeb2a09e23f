"""``skip_nonfinite_grads``: a step whose gradients hold inf or nan changes nothing and is counted.

The poisoned value always sits in the LAST parameter of the LAST param group, so a step that
updated some groups before noticing would be caught. Every comparison is bitwise.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle

import pytest
import torch
from torch import nn

from adabalance_hf import AdaBalance

# transformers is imported inside the tests that use it: the two-rank test's spawned workers
# import this module, and importing transformers there would double their start-up time.

PATHS = {"per_tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
DTYPES = {"fp32": torch.float32, "bf16_master": torch.bfloat16}
# Two param groups; the second has amsbound (so max_exp_avg_sq is checked too) and L2 decay.
SHAPES = [[(4, 3), (3,)], [(3, 2), (2,)]]
GOOD_BEFORE, GOOD_AFTER = 2, 2
COUNT_KEY = "nonfinite_steps_skipped"


def _params(dtype: torch.dtype) -> list[list[nn.Parameter]]:
    generator = torch.Generator().manual_seed(0)
    return [
        [nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in group]
        for group in SHAPES
    ]


def _optimizer(groups: list[list[torch.Tensor]], **kwargs) -> AdaBalance:
    return AdaBalance(
        [{"params": groups[0]}, {"params": groups[1], "amsbound": True, "weight_decay": 0.1}],
        lr=1e-2,
        gamma=0.1,
        **kwargs,
    )


def _grads(step: int, dtype: torch.dtype) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + step)
    return [[torch.randn(shape, generator=generator).to(dtype) for shape in g] for g in SHAPES]


def _poisoned(step: int, dtype: torch.dtype, bad: float) -> list[list[torch.Tensor]]:
    grads = _grads(step, dtype)
    grads[-1][-1].view(-1)[-1] = bad  # last element of the last parameter of the last group
    return grads


def _set_grads(groups: list[list[torch.Tensor]], grads: list[list[torch.Tensor]]) -> None:
    for params, values in zip(groups, grads, strict=True):
        for param, grad in zip(params, values, strict=True):
            param.grad = grad.clone()


def _snapshot(optimizer: AdaBalance) -> list[dict[str, torch.Tensor]]:
    """Every parameter and every state tensor (master weights and step counts included)."""
    out = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            entry = {"param": param.detach().clone()}
            entry.update({k: v.clone() for k, v in optimizer.state[param].items()})
            out.append(entry)
    return out


def _assert_bitwise_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for index, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys(), index
        for key in x:
            assert x[key].dtype == y[key].dtype, (index, key)
            assert torch.equal(x[key], y[key]), (index, key)


# ---- a poisoned step changes nothing; later steps are those of a run that never saw it ----------


@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
def test_poisoned_step_changes_nothing_and_is_counted(path, dtype, bad, caplog) -> None:
    guarded_params, reference_params = _params(dtype), _params(dtype)
    guarded = _optimizer(guarded_params, skip_nonfinite_grads=True, **path)
    reference = _optimizer(reference_params, **path)  # simply never steps on the bad batch
    for step in range(GOOD_BEFORE):
        _set_grads(guarded_params, _grads(step, dtype))
        _set_grads(reference_params, _grads(step, dtype))
        guarded.step()
        reference.step()
    if dtype == torch.bfloat16:
        assert all("master_param" in entry for entry in _snapshot(guarded))
    assert all("max_exp_avg_sq" in entry for entry in _snapshot(guarded)[2:])

    before = _snapshot(guarded)
    _set_grads(guarded_params, _poisoned(GOOD_BEFORE, dtype, bad))
    with caplog.at_level(logging.WARNING, logger="adabalance_hf"):
        assert guarded.step(lambda: 7.0) == 7.0  # the closure's loss is still returned
    _assert_bitwise_equal(_snapshot(guarded), before)
    assert guarded.nonfinite_steps_skipped == 1
    assert [g[COUNT_KEY] for g in guarded.param_groups] == [1, 1]
    records = [r for r in caplog.records if r.name == "adabalance_hf"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "parameter 1 of param group 1" in message and "1 non-finite step(s)" in message
    assert f"taken {GOOD_BEFORE} steps" in message

    for step in range(GOOD_BEFORE + 1, GOOD_BEFORE + 1 + GOOD_AFTER):
        _set_grads(guarded_params, _grads(step, dtype))
        _set_grads(reference_params, _grads(step, dtype))
        guarded.step()
        reference.step()
    _assert_bitwise_equal(_snapshot(guarded), _snapshot(reference))
    steps = {float(guarded.state[p]["step"]) for g in guarded_params for p in g}
    assert steps == {float(GOOD_BEFORE + GOOD_AFTER)}
    assert guarded.nonfinite_steps_skipped == 1


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
def test_without_the_option_the_poison_spreads(path, dtype) -> None:
    """The control: the same poisoned step, option off (the default), ruins the parameter."""
    params = _params(dtype)
    optimizer = _optimizer(params, **path)
    for step in range(GOOD_BEFORE):
        _set_grads(params, _grads(step, dtype))
        optimizer.step()
    _set_grads(params, _poisoned(GOOD_BEFORE, dtype, math.nan))
    optimizer.step()
    assert torch.isnan(params[-1][-1]).any()
    assert optimizer.nonfinite_steps_skipped == 0


def test_first_step_poisoned_creates_no_state() -> None:
    params = _params(torch.float32)
    optimizer = _optimizer(params, skip_nonfinite_grads=True)
    initial = [p.detach().clone() for g in params for p in g]
    _set_grads(params, _poisoned(0, torch.float32, math.inf))
    optimizer.step()
    assert len(optimizer.state) == 0
    flat = [p for g in params for p in g]
    assert all(torch.equal(a, p) for a, p in zip(initial, flat, strict=True))


def test_huge_finite_gradients_are_not_skipped() -> None:
    """The check's 2-norms overflow here although every element is finite: no skip."""
    big = nn.Parameter(torch.ones(4))
    half = nn.Parameter(torch.ones(4).half())
    optimizer = AdaBalance([big, half], skip_nonfinite_grads=True)
    big.grad = torch.full((4,), 1e20)  # squares overflow fp32
    half.grad = torch.full((4,), 6e4).half()  # a norm beyond fp16's range
    optimizer.step()
    assert optimizer.nonfinite_steps_skipped == 0
    assert optimizer.state[big]["step"].item() == optimizer.state[half]["step"].item() == 1.0


def test_complex_and_float64_gradients_are_checked() -> None:
    real = nn.Parameter(torch.randn(2, dtype=torch.float64))
    imag = nn.Parameter(torch.randn(3, dtype=torch.complex64))
    optimizer = AdaBalance([real, imag], skip_nonfinite_grads=True)
    real.grad = torch.ones(2, dtype=torch.float64)
    imag.grad = torch.tensor([1, complex(0, math.nan), 2], dtype=torch.complex64)
    before = [real.detach().clone(), imag.detach().clone()]
    optimizer.step()
    assert torch.equal(real.detach(), before[0]) and torch.equal(imag.detach(), before[1])
    assert optimizer.nonfinite_steps_skipped == 1 and len(optimizer.state) == 0


def test_grad_scaler_skips_are_left_to_the_scaler() -> None:
    """Under GradScaler the scaler's found_inf skips the step first; it is not counted."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2).half()
    optimizer = AdaBalance(model.parameters(), lr=1e-3, skip_nonfinite_grads=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    scaler.scale(model(torch.randn(8, 4).half()).float().pow(2).mean()).backward()
    model.weight.grad[0, 0] = float("inf")
    weight = model.weight.detach().clone()
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() < 2.0**8
    assert torch.equal(model.weight.detach(), weight)
    assert optimizer.nonfinite_steps_skipped == 0


# ---- the count survives every way of saving and copying ----------------------------------------


def _skipped_once(**kwargs) -> tuple[list[list[torch.Tensor]], AdaBalance]:
    params = _params(torch.float32)
    optimizer = _optimizer(params, skip_nonfinite_grads=True, **kwargs)
    _set_grads(params, _grads(0, torch.float32))
    optimizer.step()
    _set_grads(params, _poisoned(1, torch.float32, math.nan))
    optimizer.step()
    assert optimizer.nonfinite_steps_skipped == 1
    return params, optimizer


def test_count_round_trips_through_state_dict_copies_and_dcp() -> None:
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    params, optimizer = _skipped_once()
    fresh = _optimizer(params, skip_nonfinite_grads=True)
    fresh.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert fresh.nonfinite_steps_skipped == 1
    for clone in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert clone.nonfinite_steps_skipped == 1
        assert all(g["skip_nonfinite_grads"] is True for g in clone.param_groups)

    # DCP flattens the param groups per parameter name: the count must come back too.
    model = nn.ParameterList([p for g in params for p in g])
    dcp_state = get_optimizer_state_dict(model, optimizer)
    target_model = nn.ParameterList([nn.Parameter(p.detach().clone()) for p in model])
    target_params = [list(target_model)[:2], list(target_model)[2:]]
    target = _optimizer(target_params, skip_nonfinite_grads=True)
    set_optimizer_state_dict(target_model, target, dcp_state)
    assert target.nonfinite_steps_skipped == 1

    # A later skip counts on from the loaded value, in every group.
    _set_grads(params, _poisoned(2, torch.float32, math.inf))
    fresh.step()
    assert fresh.nonfinite_steps_skipped == 2
    assert [g[COUNT_KEY] for g in fresh.param_groups] == [2, 2]
    late = torch.randn(3, requires_grad=True)
    fresh.add_param_group({"params": [late]})
    assert fresh.param_groups[-1][COUNT_KEY] == 2


def test_state_dict_from_before_the_option_loads_with_a_zero_count() -> None:
    params, optimizer = _skipped_once()
    old = copy.deepcopy(optimizer.state_dict())
    for group in old["param_groups"]:
        del group["skip_nonfinite_grads"], group[COUNT_KEY]
    fresh = _optimizer(params, skip_nonfinite_grads=True)
    fresh.load_state_dict(old)
    assert fresh.nonfinite_steps_skipped == 0
    # The loading optimizer's setting stands: resuming with the option on keeps it on, even
    # from a checkpoint of a run that had it off (the run that died on a bad batch).
    assert all(g["skip_nonfinite_grads"] is True for g in fresh.param_groups)
    before = _snapshot(fresh)
    _set_grads(params, _poisoned(2, torch.float32, math.inf))
    fresh.step()
    _assert_bitwise_equal(_snapshot(fresh), before)
    assert fresh.nonfinite_steps_skipped == 1


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_invalid_value_names_the_argument(value) -> None:
    with pytest.raises(ValueError, match="skip_nonfinite_grads") as error:
        AdaBalance([torch.zeros(2, requires_grad=True)], skip_nonfinite_grads=value)
    assert repr(value) in str(error.value) and "True or False" in str(error.value)
    optimizer = AdaBalance([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match="skip_nonfinite_grads"):
        optimizer.add_param_group(
            {"params": [torch.zeros(2, requires_grad=True)], "skip_nonfinite_grads": value}
        )
