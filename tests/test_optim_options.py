"""Each option is declared once, in ``options.OPTIONS``: the signatures, defaults, checks, state
dict upgrade, step hyper-parameters and ``optim_args`` all follow the table."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from adabalance_hf import AdaBalance, AdaBalance4bit, AdaBalance8bit
from adabalance_hf.optim.options import (
    OPTIONS,
    REFERENCE_KEYS,
    UPGRADE_DEFAULTS,
    Hyper,
    check_signature,
    hyper_of,
)
from adabalance_hf.optim_args import optim_args_keys, parse_optim_args

CLASSES = [(AdaBalance, False), (AdaBalance8bit, True), (AdaBalance4bit, True)]


@pytest.mark.parametrize(("cls", "low_bit"), CLASSES, ids=lambda c: getattr(c, "__name__", ""))
def test_signatures_have_the_table_names_order_and_defaults(cls, low_bit) -> None:
    expected = [
        (o.name, o.default) for o in OPTIONS if o.role == "argument" and (low_bit or not o.low_bit)
    ]
    parameters = list(inspect.signature(cls).parameters.values())
    assert [(p.name, p.default) for p in parameters[1:]] == expected
    for (_, default), (_, want) in zip(
        [(p.name, p.default) for p in parameters[1:]], expected, strict=True
    ):
        assert type(default) is type(want)
    docstring = (cls.__doc__ or "").split("Args:")[1]
    for name, _ in expected:  # each argument is documented
        assert re.search(rf"^\s+{name} \(", docstring, re.M), name


def test_a_signature_that_drifts_from_the_table_fails_at_import() -> None:
    def init(self, params, lr=1e-3, betas=(0.9, 0.999), beta3=0.99):  # beta3 drifted, rest gone
        pass

    with pytest.raises(ImportError, match=r"OPTIONS declares .*table's names, order and defaults"):
        check_signature(init)
    signature = inspect.signature(AdaBalance.__init__)
    init.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(default=1) if p.name == "lr" else p for p in signature.parameters.values()
        ]
    )
    with pytest.raises(ImportError, match=r"\('lr', 1\)"):  # an int where the table has a float
        check_signature(init)
    init.__signature__ = signature  # type: ignore[attr-defined]
    check_signature(init)


def test_defaults_of_a_built_optimizer_are_the_table_defaults() -> None:
    optimizer = AdaBalance8bit([torch.zeros(2, requires_grad=True)], fused=False)
    for option in OPTIONS:
        if option.role != "record" and option.name not in ("foreach", "fused", "block_size"):
            assert optimizer.defaults[option.name] == option.default, option.name
    # None in the table: the class's own default, resolved at construction.
    assert optimizer.defaults["block_size"] == AdaBalance8bit.default_block_size == 128
    assert AdaBalance4bit([torch.zeros(2, requires_grad=True)]).defaults["block_size"] == 32


def test_a_group_saved_with_the_reference_keys_only_gets_the_table_defaults() -> None:
    param = torch.zeros(3, requires_grad=True)
    optimizer = AdaBalance([param], amsbound=True, maximize=True)
    state = optimizer.__getstate__()
    state["param_groups"] = [
        {"params": [param], **{key: optimizer.param_groups[0][key] for key in REFERENCE_KEYS}}
    ]
    old = AdaBalance.__new__(AdaBalance)
    old.__setstate__(state)
    group = old.param_groups[0]
    assert {key: group[key] for key in UPGRADE_DEFAULTS} == UPGRADE_DEFAULTS
    assert group["base_lr"] == group["lr"]
    param.grad = torch.ones(3)
    old.step()  # every option a step reads is there


def test_hyper_is_the_step_view_of_a_group() -> None:
    optimizer = AdaBalance(
        [torch.zeros(2, requires_grad=True)], lr=torch.tensor(2e-3), betas=[0.8, 0.99]
    )
    hyper = hyper_of(optimizer.param_groups[0])
    assert Hyper._fields == tuple(field for o in OPTIONS for field in o.step)
    assert (hyper.lr, hyper.base_lr, hyper.beta1, hyper.beta2) == pytest.approx(
        (2e-3, 2e-3, 0.8, 0.99)
    )
    assert type(hyper.lr) is float and hyper.stochastic_round is False


def test_optim_args_keys_and_conversions_are_the_table_rows() -> None:
    for cls, low_bit in CLASSES:
        expected = [o.name for o in OPTIONS if o.optim_args and (low_bit or not o.low_bit)]
        assert list(optim_args_keys(cls)) == expected
    text = ",".join(
        f"{o.name}={str(o.default).lower()}" for o in OPTIONS if o.optim_args and not o.low_bit
    )
    expected = {o.name: o.default for o in OPTIONS if o.optim_args and not o.low_bit}
    assert parse_optim_args(text) == expected


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.role == "argument"], ids=str)
def test_every_option_rejects_a_value_of_another_kind_naming_itself(option) -> None:
    option.check(option.default)
    with pytest.raises(ValueError, match=rf"Invalid {re.escape(option.name)}(\[0\])?: "):
        option.check("x" if option.kind != "betas" else ("x", 0.9))
