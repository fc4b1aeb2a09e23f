"""TRL's SFT and DPO trainers with the AdaBalance optimizer names, on a tiny Llama."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _trl_fixtures import (
    assert_same_state,
    dpo_dataset,
    inner_optimizer,
    sft_dataset,
    snapshot,
    tiny_llama,
    tokenizer,
    trl_kwargs,
)
from transformers import HfArgumentParser, TrainerCallback
from transformers.training_args import OptimizerNames
from trl import DPOConfig, SFTConfig

from adabalance_hf import AdaBalance, AdaBalance8bit
from adabalance_hf.integrations.transformers import FINE_TUNING_DEFAULTS
from adabalance_hf.integrations.trl import (
    AdaBalanceDPOConfig,
    AdaBalanceDPOTrainer,
    AdaBalanceSFTConfig,
    AdaBalanceSFTTrainer,
)

KINDS = {
    "sft": (SFTConfig, AdaBalanceSFTConfig, AdaBalanceSFTTrainer, sft_dataset),
    "dpo": (DPOConfig, AdaBalanceDPOConfig, AdaBalanceDPOTrainer, dpo_dataset),
}
# Fields whose value legitimately differs: the optimizer name is a str here, an enum in TRL.
OPTIM_FIELDS = {"optim", "optim_args"}


def build(kind, output_dir, *, rows=8, callbacks=(), hidden_size=32, **overrides):
    """A trainer of ``kind`` on a fresh tiny Llama; DPO gets an identical frozen reference."""
    _, config_cls, trainer_cls, data = KINDS[kind]
    args = config_cls(**trl_kwargs(output_dir, **{"optim": "adabalance", **overrides}))
    # A model built from a config has no name_or_path for DPOTrainer to load a reference from,
    # so the reference is passed: the same seed gives the same initial weights.
    extra = {"ref_model": tiny_llama(hidden_size=hidden_size)} if kind == "dpo" else {}
    return trainer_cls(
        model=tiny_llama(hidden_size=hidden_size),
        args=args,
        train_dataset=data(rows),
        processing_class=tokenizer(),
        callbacks=list(callbacks),
        **extra,
    )


def field_default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


# (a) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_config_keeps_every_trl_default(kind, tmp_path):
    trl_cls, ours_cls, _, _ = KINDS[kind]
    assert issubclass(ours_cls, trl_cls)
    theirs = {f.name: f for f in dataclasses.fields(trl_cls)}
    ours = {f.name: f for f in dataclasses.fields(ours_cls)}
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    differ = {
        name: (field_default(ours[name]), field_default(f))
        for name, f in theirs.items()
        if name not in OPTIM_FIELDS and field_default(ours[name]) != field_default(f)
    }
    assert not differ, differ
    # The default optimizer is TRL's (a built-in name), not an AdaBalance one.
    assert OptimizerNames(field_default(ours["optim"])) == OptimizerNames(
        field_default(theirs["optim"])
    )
    # The spot checks the brief names, then every value after __post_init__ (TRL's and
    # transformers' derived values included). use_cpu: bf16 defaults on, which needs it here.
    assert ours_cls.learning_rate == trl_cls.learning_rate != 5e-5
    assert ours_cls.gradient_checkpointing is trl_cls.gradient_checkpointing is True
    assert ours_cls.logging_steps == trl_cls.logging_steps == 10
    mine, stock = (
        ours_cls(output_dir=str(tmp_path), use_cpu=True),
        trl_cls(output_dir=str(tmp_path), use_cpu=True),
    )
    values = {
        name: (getattr(mine, name), getattr(stock, name))
        for name in theirs
        if name not in OPTIM_FIELDS and getattr(mine, name) != getattr(stock, name)
    }
    assert not values, values
    assert OptimizerNames(mine.optim) == stock.optim


# (b) -------------------------------------------------------------------------------------------

NAME_CASES = [
    ("adabalance", None, {}),
    (
        "adabalance",
        "final_lr=0.05,gamma=1e-3,beta3=0.99",
        {"final_lr": 0.05, "gamma": 1e-3, "beta3": 0.99},
    ),
    ("adabalancew_amsbound", "final_lr=0.05", {"final_lr": 0.05}),
]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(("name", "optim_args", "given"), NAME_CASES)
def test_name_builds_adabalance_with_its_options(kind, name, optim_args, given, tmp_path):
    trainer = build(kind, tmp_path, rows=4, optim=name, optim_args=optim_args, weight_decay=0.01)
    trainer.create_optimizer()
    optimizer = inner_optimizer(trainer)
    assert type(optimizer) is AdaBalance
    assert FINE_TUNING_DEFAULTS and set(FINE_TUNING_DEFAULTS) <= set(optimizer.defaults)
    # Options optim_args leaves open get the fine-tuning defaults; the ones it gives win.
    expected = {**FINE_TUNING_DEFAULTS, **given}
    expected["amsbound"] = "amsbound" in name
    expected["decoupled_weight_decay"] = name.startswith("adabalancew")
    for group in optimizer.param_groups:
        for key, value in expected.items():
            assert group[key] == value, (key, group[key], value)
        assert group["lr"] == 1e-2
        assert group["betas"] == (trainer.args.adam_beta1, trainer.args.adam_beta2)
    # Grouped as the Trainer groups them: decay, then no decay (norm weights).
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_builtin_name_still_works(kind, tmp_path):
    trainer = build(kind, tmp_path, rows=4, optim="adamw_torch")
    assert trainer.args.optim == OptimizerNames.ADAMW_TORCH
    trainer.create_optimizer()
    assert type(inner_optimizer(trainer)) is torch.optim.AdamW


# (c) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_training_moves_every_parameter_with_a_gradient(kind, tmp_path):
    trainer = build(kind, tmp_path, max_steps=3)
    model = trainer.model
    before = snapshot(model)
    got_grad: set[str] = set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(
                lambda p, name=name: got_grad.add(name) if p.grad.any() else None
            )
    trainer.train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert got_grad == trainable  # every weight of the Llama takes part in the loss
    assert moved == got_grad, got_grad ^ moved
    optimizer = inner_optimizer(trainer)
    assert type(optimizer) is AdaBalance
    assert all(float(s["step"]) == 3 for s in optimizer.state.values())
    if kind == "dpo":  # the reference stays frozen
        for name, p in trainer.ref_model.named_parameters():
            assert torch.equal(p, before[name]), name


# (d) -------------------------------------------------------------------------------------------


class CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.steps += 1


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_resume_from_the_middle_checkpoint_is_bitwise_exact(kind, tmp_path):
    # 12 rows, batch 4: 3 steps an epoch, so the resumed half crosses an epoch boundary.
    common = dict(
        rows=12,
        max_steps=4,
        optim="adabalance_amsbound",
        optim_args="final_lr=0.05,gamma=1e-2",
        weight_decay=0.01,
        warmup_steps=1,
    )
    straight = build(kind, tmp_path, save_strategy="steps", save_steps=2, **common)
    straight.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").is_file() and (tmp_path / "checkpoint-4").is_dir()

    counter = CountSteps()
    resumed = build(kind, tmp_path, callbacks=[counter], **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    assert counter.steps == 2  # it resumed: only steps 3 and 4 ran here

    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    opt_a, opt_b = inner_optimizer(straight), inner_optimizer(resumed)
    assert type(opt_b) is AdaBalance
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a["state"] and float(state_b["state"][0]["step"]) == 4
    assert_same_state(state_a["state"], state_b["state"], "state")
    assert_same_state(state_a["param_groups"], state_b["param_groups"], "param_groups")
    assert state_b["param_groups"][0]["amsbound"] is True


def test_an_8bit_name_trains_with_8bit_state_and_resumes_bitwise(tmp_path):
    # SFT only: DPO builds its optimizer through the same code (the tests above, for both).
    # hidden 64: the MLP weights (8,192 elements) are large enough for 8-bit state.
    kind = "sft"
    common = dict(rows=8, max_steps=4, optim="adabalancew_8bit", hidden_size=64, weight_decay=0.01)
    straight = build(kind, tmp_path, save_strategy="steps", save_steps=2, **common)
    straight.train()
    optimizer = inner_optimizer(straight)
    assert type(optimizer) is AdaBalance8bit
    codes = [s["exp_avg"].dtype for s in optimizer.state.values()]
    assert torch.int8 in codes and torch.float32 in codes  # 8-bit, and the small tensors fp32

    resumed = build(kind, tmp_path, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    assert_same_state(optimizer.state_dict()["state"],
                      inner_optimizer(resumed).state_dict()["state"], "state")  # fmt: skip


# (e) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_argument_parser_takes_the_names(kind, tmp_path, capsys):
    trl_cls, ours_cls, _, _ = KINDS[kind]
    parser = HfArgumentParser(ours_cls)
    common = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    (args,) = parser.parse_args_into_dataclasses(
        [*common, "--optim", "adabalance", "--optim_args", "beta3=0.9"]
    )
    assert type(args) is ours_cls
    assert args.optim == "adabalance" and args.optim_args == "beta3=0.9"
    assert args.learning_rate == trl_cls.learning_rate  # TRL's default, not transformers'

    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses([*common, "--optim", "adabalanze"])
    err = capsys.readouterr().err
    assert "adabalanze" in err
    for valid in ("adabalance", "adabalancew", "adamw_torch"):
        assert f"'{valid}'" in err or f"{valid}," in err, err

    with pytest.raises(ValueError, match="adabalanze") as raised:
        ours_cls(output_dir=str(tmp_path), use_cpu=True, optim="adabalanze")
    for valid in ("adabalance", "adabalancew_amsbound", "adamw_torch"):
        assert valid in str(raised.value)
