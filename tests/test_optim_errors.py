"""Bad input reaches the user as a clear error that names the argument and the value."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from adabalance_hf import AdaBalance

INVALID = [
    ("lr", {"lr": -1e-3}, "-0.001"),
    ("lr", {"lr": math.nan}, "nan"),
    ("lr", {"lr": math.inf}, "inf"),
    ("lr", {"lr": "1e-3"}, "'1e-3'"),
    ("eps", {"eps": -1e-8}, "-1e-08"),
    ("betas[0]", {"betas": (1.0, 0.999)}, "1.0"),
    ("betas[1]", {"betas": (0.9, -0.1)}, "-0.1"),
    ("betas", {"betas": (0.9,)}, "(0.9,)"),
    ("beta3", {"beta3": 1.0}, "1.0"),
    ("beta3", {"beta3": -0.5}, "-0.5"),
    ("final_lr", {"final_lr": -0.1}, "-0.1"),
    ("gamma", {"gamma": 1.0}, "1.0"),
    ("gamma", {"gamma": -1e-3}, "-0.001"),
    ("weight_decay", {"weight_decay": -0.01}, "-0.01"),
    ("amsbound", {"amsbound": "yes"}, "'yes'"),
    ("foreach", {"foreach": "auto"}, "'auto'"),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "shown_value"), INVALID, ids=[f"{n}={v}" for n, _, v in INVALID]
)
def test_invalid_hyperparameter_names_argument_and_value(name, kwargs, shown_value) -> None:
    with pytest.raises(ValueError, match=re.escape(f"Invalid {name}: {shown_value}")):
        AdaBalance([torch.zeros(2, requires_grad=True)], **kwargs)


def test_invalid_hyperparameter_in_a_later_group_leaves_the_optimizer_unchanged() -> None:
    optimizer = AdaBalance([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match=re.escape("Invalid gamma: 2.0")):
        optimizer.add_param_group({"params": [torch.zeros(3, requires_grad=True)], "gamma": 2.0})
    assert len(optimizer.param_groups) == 1


def test_sparse_gradient_error_names_adabalance_and_the_parameter() -> None:
    embedding = nn.Embedding(10, 3, sparse=True)
    dense = nn.Linear(3, 1)
    optimizer = AdaBalance([{"params": dense.parameters()}, {"params": embedding.parameters()}])
    dense(embedding(torch.tensor([1, 2]))).sum().backward()
    with pytest.raises(RuntimeError, match=r"AdaBalance .*sparse.*parameter 0 of param group 1"):
        optimizer.step()


class _UnfusableTensor(torch.Tensor):
    """A tensor subclass that torch's foreach kernels do not accept."""


def test_foreach_true_on_unsupported_tensors_explains_why() -> None:
    param = torch.zeros(3).as_subclass(_UnfusableTensor).requires_grad_()
    param.grad = torch.ones(3)
    optimizer = AdaBalance([param], foreach=True)
    with pytest.raises(RuntimeError, match=r"foreach=True.*_UnfusableTensor.*foreach=False"):
        optimizer.step()
    # The per-tensor path takes it.
    AdaBalance([param], foreach=False).step()


def _stepped(optimizer_cls, model, **kwargs):
    optimizer = optimizer_cls(model.parameters(), **kwargs)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return optimizer


def test_state_dict_of_another_optimizer_is_rejected_with_missing_keys() -> None:
    model = nn.Linear(4, 2)
    adam_state = _stepped(torch.optim.Adam, model).state_dict()
    optimizer = AdaBalance(model.parameters())
    with pytest.raises(ValueError, match=r"lacks \['exp_avg_lr'\].*torch.optim.Adam"):
        optimizer.load_state_dict(adam_state)
    assert len(optimizer.state) == 0


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
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        split.load_state_dict({"state": {}})
