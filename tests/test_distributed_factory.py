"""create_optimizer in one process: groups, errors, DCP's state initialisation.

Its launch checks: tests/test_launch_checks.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _dist_helpers import tiny_bert
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict
from transformers import Trainer

from adabalance_hf import AdaBalance, create_optimizer
from adabalance_hf.decay_groups import param_groups, trainer_param_groups
from adabalance_hf.distributed import optimizer_state_bytes


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_a_name_gives_the_class_variant_and_fine_tuning_defaults(clean_env) -> None:
    from adabalance_hf import AdaBalance8bit

    model = tiny_bert()
    options = {"optim": "adabalancew_8bit", "optim_args": "block_size=64,gamma=1e-3"}
    optimizer = create_optimizer(model, lr=2e-3, weight_decay=0.01, final_lr=0.2, **options)
    assert type(optimizer) is AdaBalance8bit
    group = optimizer.param_groups[0]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert (group["lr"], group["base_lr"], group["block_size"]) == (2e-3, 2e-3, 64)
    assert (group["final_lr"], group["gamma"]) == (0.2, 1e-3)  # the override, optim_args
    assert group["beta3"] == 0.9 and group["decoupled_weight_decay"] is True  # name defaults
    with pytest.raises(TypeError, match="not both"):
        create_optimizer(model, optim="adabalance", optimizer_class=AdaBalance8bit)
    with pytest.raises(TypeError, match="needs `optim`"):
        create_optimizer(model, optim_args="gamma=1e-3")
    with pytest.raises(ValueError, match="gamma='x' is not a finite float"):
        create_optimizer(model, optim="adabalance", optim_args="gamma=x")


def test_groups_follow_the_trainer_rule(clean_env) -> None:
    model = tiny_bert()
    optimizer = create_optimizer(model, lr=3e-3, weight_decay=0.05, final_lr=0.02)
    assert type(optimizer) is AdaBalance
    expected = trainer_param_groups(model, 0.05)
    assert [_ids(g["params"]) for g in optimizer.param_groups] == [
        _ids(g["params"]) for g in expected
    ]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 3e-3 and g["base_lr"] == 3e-3 for g in optimizer.param_groups)
    assert all(g["final_lr"] == 0.02 for g in optimizer.param_groups)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in optimizer.param_groups[1]["params"]}
    assert "bert.embeddings.LayerNorm.weight" in no_decay
    assert "classifier.bias" in no_decay
    assert "classifier.weight" not in no_decay


def test_no_decay_extends_the_rule_by_pattern_and_module_type(clean_env) -> None:
    model = tiny_bert()
    names = {id(p): n for n, p in model.named_parameters()}
    by_pattern = create_optimizer(model, weight_decay=0.1, no_decay=["Position_Embeddings"])
    by_type = create_optimizer(model, weight_decay=0.1, no_decay=[nn.Embedding])
    decayed = {names[id(p)] for p in by_pattern.param_groups[0]["params"]}
    assert "bert.embeddings.position_embeddings.weight" not in decayed
    assert "bert.embeddings.word_embeddings.weight" in decayed
    decayed = {names[id(p)] for p in by_type.param_groups[0]["params"]}
    assert not any("embeddings" in n and "LayerNorm" not in n for n in decayed)
    assert "classifier.weight" in decayed
    baseline = {names[id(p)] for p in create_optimizer(model, 0.1).param_groups[0]["params"]}
    assert decayed < baseline


def test_trainer_subclass_rule_is_used(clean_env) -> None:
    class NoDecayAnywhere(Trainer):
        def get_decay_parameter_names(self, model):
            return []

    model = tiny_bert()
    optimizer = create_optimizer(model, weight_decay=0.1, trainer_cls=NoDecayAnywhere)
    assert len(optimizer.param_groups) == 1  # the empty decay group is left out
    assert optimizer.param_groups[0]["weight_decay"] == 0.0


def test_frozen_parameters_are_left_out(clean_env) -> None:
    model = tiny_bert()
    model.bert.embeddings.requires_grad_(False)
    optimizer = create_optimizer(model, weight_decay=0.1)
    held = _ids(p for g in optimizer.param_groups for p in g["params"])
    assert held == _ids(p for p in model.parameters() if p.requires_grad)


def test_ddp_style_prefixed_names_group_the_same(clean_env) -> None:
    inner = tiny_bert()
    wrapper = nn.Module()
    wrapper.module = inner
    flat = param_groups(inner, 0.1)
    wrapped = param_groups(wrapper, 0.1)
    assert [_ids(g["params"]) for g in flat] == [_ids(g["params"]) for g in wrapped]


def test_lr_as_a_tensor_is_accepted(clean_env) -> None:
    model = tiny_bert()
    optimizer = create_optimizer(model, lr=torch.tensor(1e-2))
    assert optimizer.param_groups[0]["base_lr"] == pytest.approx(1e-2)


def test_bad_input_errors_name_the_argument(clean_env) -> None:
    model = tiny_bert()
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['betas1'\].*betas"):
        create_optimizer(model, betas1=0.9)
    with pytest.raises(TypeError, match=r"`model` must be a torch\.nn\.Module"):
        create_optimizer(list(model.parameters()))
    frozen = tiny_bert().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer(frozen)
    with pytest.raises(ValueError, match="`sharding` must be one of"):
        create_optimizer(model, sharding="zero2")
    with pytest.raises(ValueError, match=r"not DTensors.*fully_shard"):
        create_optimizer(model, sharding="fsdp2")
    with pytest.raises(TypeError, match="`no_decay` entries"):
        create_optimizer(model, no_decay=[3])
    with pytest.raises(ValueError, match="Invalid"):
        create_optimizer(model, lr=-1.0)


def test_zero1_without_process_group_says_how_to_fix(clean_env) -> None:
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match=r"needs an initialised.*init_process_group"):
        create_optimizer(tiny_bert(), sharding="zero1")


@pytest.mark.parametrize(
    "path",
    [{"foreach": False}, {"foreach": True}, {"fused": True}],
    ids=["per_tensor", "foreach", "fused"],
)
@pytest.mark.parametrize("lr", [1e-2, torch.tensor(1e-2)], ids=["float_lr", "tensor_lr"])
def test_dcp_state_initialisation_changes_nothing(clean_env, path: dict, lr) -> None:
    """get_state_dict on a fresh optimizer steps once with zero grads and lr = 0 (or tensor 0)."""
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = create_optimizer(
        model, lr=lr, weight_decay=0.1, decoupled_weight_decay=True, **path
    )
    _, optim_state = get_state_dict(model, optimizer)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert len(optim_state["state"]) == sum(1 for _ in model.parameters())
    for state in optimizer.state.values():
        assert all(torch.isfinite(v).all() for v in state.values())
    assert type(optimizer.param_groups[0]["lr"]) is type(lr)  # restored as it was
    assert optimizer_state_bytes(optimizer) == 3 * 4 * sum(p.numel() for p in model.parameters())
