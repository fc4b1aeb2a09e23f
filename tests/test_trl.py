"""TRL's own SFT, DPO and GRPO configs and trainers with the AdaBalance names, on a tiny Llama."""

from __future__ import annotations

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
from transformers import HfArgumentParser, Trainer, TrainerCallback
from transformers.training_args import OptimizerNames
from trl import DPOConfig, DPOTrainer, GRPOConfig, SFTConfig, SFTTrainer, TrlParser

from adabalance_hf import FINE_TUNING_DEFAULTS, AdaBalance, AdaBalance4bit, AdaBalance8bit
from adabalance_hf.integrations.transformers import OptimizerOptionError

# TRL's own classes: import adabalance_hf registers the names with transformers, so every TRL
# config (a TrainingArguments subclass) and trainer (a Trainer subclass) takes them.
KINDS = {
    "sft": (SFTConfig, SFTTrainer, sft_dataset),
    "dpo": (DPOConfig, DPOTrainer, dpo_dataset),
}


def build(kind, output_dir, *, rows=8, callbacks=(), hidden_size=32, **overrides):
    """A trainer of ``kind`` on a fresh tiny Llama; DPO gets an identical frozen reference."""
    config_cls, trainer_cls, data = KINDS[kind]
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


# (a) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_cls", [SFTConfig, DPOConfig, GRPOConfig])
def test_trl_configs_take_the_names_and_keep_their_defaults(config_cls, tmp_path):
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", bf16=False)
    args = config_cls(**base, optim="adabalancew", optim_args="final_lr=0.05")
    assert args.optim == "adabalancew"
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is AdaBalance and kwargs["final_lr"] == 0.05 and kwargs["decoupled_weight_decay"]
    assert kwargs["lr"] == config_cls.learning_rate
    default = config_cls(**base)
    assert args.learning_rate == default.learning_rate == config_cls.learning_rate != 5e-5
    assert default.optim == config_cls.__dataclass_fields__["optim"].default  # not a name
    with pytest.raises(OptimizerOptionError, match=r"--optim_args 'gamma=abc' \(with --optim"):
        config_cls(**base, optim="adabalancew", optim_args="gamma=abc")


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


@pytest.mark.parametrize(
    ("optim", "cls", "code_dtype"),
    [
        ("adabalancew_8bit", AdaBalance8bit, torch.int8),
        ("adabalancew_4bit", AdaBalance4bit, torch.uint8),
    ],
)
def test_a_low_bit_name_trains_with_low_bit_state_and_resumes_bitwise(
    tmp_path, optim, cls, code_dtype
):
    # SFT only: DPO builds its optimizer through the same code (the tests above, for both).
    # hidden 64: the MLP weights (8,192 elements) are large enough for low-bit state. The eager
    # kernel: the compiled one is the same arithmetic (tests/test_optim_4bit.py), and its compile
    # in this process would cost most of the test's time.
    kind = "sft"
    common = dict(rows=8, max_steps=4, optim=optim, optim_args="fused=false", hidden_size=64,
                  weight_decay=0.01)  # fmt: skip
    straight = build(kind, tmp_path, save_strategy="steps", save_steps=2, **common)
    straight.train()
    optimizer = inner_optimizer(straight)
    assert type(optimizer) is cls
    codes = [s["exp_avg"].dtype for s in optimizer.state.values()]
    assert code_dtype in codes and torch.float32 in codes  # low-bit, and small tensors fp32

    resumed = build(kind, tmp_path, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    assert_same_state(optimizer.state_dict()["state"],
                      inner_optimizer(resumed).state_dict()["state"], "state")  # fmt: skip


# (e) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parser_cls", [HfArgumentParser, TrlParser])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_argument_parsers_take_the_names(kind, parser_cls, tmp_path, capsys):
    config_cls = KINDS[kind][0]
    parser = parser_cls(config_cls)
    is_trl = parser_cls is TrlParser
    parse = parser.parse_args_and_config if is_trl else parser.parse_args_into_dataclasses
    common = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    (args,) = parse(
        [*common, "--optim", "adabalancew_8bit", "--optim_args", "block_size=64,final_lr=0.1"]
    )
    assert type(args) is config_cls
    assert args.optim == "adabalancew_8bit" and args.optim_args == "block_size=64,final_lr=0.1"
    assert args.learning_rate == config_cls.learning_rate  # TRL's default, not transformers'

    with pytest.raises(SystemExit):
        parse([*common, "--optim", "adabalanze"])
    err = capsys.readouterr().err
    assert "adabalanze" in err
    for valid in ("adabalance", "adabalancew", "adamw_torch"):
        assert f"'{valid}'" in err or f"{valid}," in err, err
    with pytest.raises(OptimizerOptionError, match="block_size") as raised:
        parse([*common, "--optim", "adabalancew", "--optim_args", "block_size=64"])
    assert str(raised.value).startswith("--optim_args 'block_size=64' (with --optim adabalancew)")


def test_trl_parser_takes_a_name_from_a_yaml_config(tmp_path):
    config = tmp_path / "sft.yaml"  # what `trl sft --config sft.yaml` reads
    config.write_text("optim: adabalancew_amsbound\noptim_args: final_lr=0.05\nuse_cpu: true\n")
    (args,) = TrlParser(SFTConfig).parse_args_and_config(
        ["--config", str(config), "--output_dir", str(tmp_path)]
    )
    assert type(args) is SFTConfig and args.optim == "adabalancew_amsbound"
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is AdaBalance and kwargs["final_lr"] == 0.05
    assert kwargs["amsbound"] is True and kwargs["decoupled_weight_decay"] is True
