"""The ways into transformers, trained end to end on tiny models built from configs.

An optimizer object, ``optimizer_cls_and_kwargs``, and the optimizer names (registered by
``import adabalance_hf``) in the stock ``Trainer``, a subclass of it and ``AdaBalanceTrainer``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from _hf_helpers import (
    classification_data,
    inner_optimizer,
    lm_data,
    make_args,
    param_names,
    tiny_bert,
    tiny_gpt2,
)
from transformers import (
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainingArguments,
)

from adabalance_hf import (
    AdaBalance,
    AdaBalance8bit,
    AdaBalanceTrainer,
    adabalance_optimizer_kwargs,
    trainer_param_groups,
)
from adabalance_hf.integrations.transformers import AdaBalanceDiagnosticsCallback, TrainerChecks
from adabalance_hf.integrations.transformers import checks as checks_module

NO_DECAY_BERT = {
    "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.LayerNorm.bias",
    "bert.encoder.layer.0.attention.output.LayerNorm.weight",
    "bert.encoder.layer.0.output.LayerNorm.weight",
    "bert.encoder.layer.0.attention.self.query.bias",
    "classifier.bias",
}
DECAY_BERT = {
    "bert.embeddings.word_embeddings.weight",
    "bert.encoder.layer.0.attention.self.query.weight",
    "classifier.weight",
}
NO_DECAY_GPT2 = {
    "transformer.h.0.ln_1.weight",
    "transformer.h.0.ln_2.weight",
    "transformer.ln_f.weight",
    "transformer.ln_f.bias",
    "transformer.h.0.attn.c_attn.bias",
}
DECAY_GPT2 = {"transformer.wte.weight", "transformer.h.0.attn.c_attn.weight"}


def check_groups(model, optimizer, weight_decay, no_decay, decay):
    """Two groups as the Trainer builds them: biases and norm weights without weight decay."""
    assert len(optimizer.param_groups) == 2
    decay_group, no_decay_group = optimizer.param_groups
    assert decay_group["weight_decay"] == weight_decay
    assert no_decay_group["weight_decay"] == 0.0
    decay_names = param_names(model, decay_group["params"])
    no_decay_names = param_names(model, no_decay_group["params"])
    assert no_decay <= no_decay_names and not (no_decay & decay_names)
    assert decay <= decay_names
    assert all("bias" not in name for name in decay_names)
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_trained(model, before):
    moved = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert "classifier.weight" in moved or "transformer.h.0.attn.c_attn.weight" in moved


def test_trainer_param_groups_match_the_trainer(tmp_path):
    for model in (tiny_bert(), tiny_gpt2()):
        stock = Trainer(model=model, args=make_args(tmp_path, weight_decay=0.1))
        stock_groups = stock.create_optimizer().param_groups
        ours = trainer_param_groups(model, 0.1)
        for mine, theirs in zip(ours, stock_groups, strict=True):
            assert [id(p) for p in mine["params"]] == [id(p) for p in theirs["params"]]
            assert mine["weight_decay"] == theirs["weight_decay"]


def test_way1_optimizer_object_with_plain_trainer(tmp_path):
    """Trainer(optimizers=(AdaBalance(...), None)): the Trainer's scheduler drives lr."""
    model = tiny_bert()
    args = make_args(tmp_path, weight_decay=0.01, warmup_steps=2, max_steps=6)
    optimizer = AdaBalance(
        trainer_param_groups(model, args.weight_decay),
        **adabalance_optimizer_kwargs(args, final_lr=0.05, decoupled_weight_decay=True),
    )
    check_groups(model, optimizer, 0.01, NO_DECAY_BERT, DECAY_BERT)
    before = snapshot(model)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=classification_data(),
        optimizers=(optimizer, None),
    )
    trainer.train()
    assert inner_optimizer(trainer) is optimizer
    assert_trained(model, before)
    logged = [e["learning_rate"] for e in trainer.state.log_history if "loss" in e]
    # lr used by each step: linear warmup over 2 steps, then linear decay to 0 after step 6
    assert logged == pytest.approx([0.0, 5e-3, 1e-2, 7.5e-3, 5e-3, 2.5e-3])
    for group in optimizer.param_groups:
        assert group["base_lr"] == 1e-2 and group["final_lr"] == 0.05
        assert group["lr"] == 0.0


def test_way2_optimizer_cls_and_kwargs_injects_lr(tmp_path):
    """Trainer(optimizer_cls_and_kwargs=(AdaBalance, adabalance_optimizer_kwargs(args)))."""
    model = tiny_gpt2()
    args = make_args(
        tmp_path, learning_rate=3e-3, adam_beta1=0.8, adam_epsilon=1e-7, weight_decay=0.05
    )
    kwargs = adabalance_optimizer_kwargs(args, final_lr=0.02, gamma=1e-2)
    before = snapshot(model)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=lm_data(),
        optimizer_cls_and_kwargs=(AdaBalance, kwargs),
    )
    trainer.train()
    optimizer = inner_optimizer(trainer)
    assert type(optimizer) is AdaBalance
    check_groups(model, optimizer, 0.05, NO_DECAY_GPT2, DECAY_GPT2)
    for group in optimizer.param_groups:
        # base_lr is the lr the optimizer was created with: the injected learning_rate.
        assert group["base_lr"] == 3e-3
        assert group["betas"] == (0.8, 0.999) and group["eps"] == 1e-7
        assert group["final_lr"] == 0.02 and group["gamma"] == 1e-2
    assert_trained(model, before)


def test_way2_without_the_helper_runs_at_the_default_rate(tmp_path):
    """The trap the helper exists for: stock transformers does not pass learning_rate."""
    trainer = Trainer(
        model=tiny_bert(),
        args=make_args(tmp_path, learning_rate=3e-3),
        optimizer_cls_and_kwargs=(AdaBalance, {}),
    )
    assert trainer.create_optimizer().param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("trainer_cls", [Trainer, AdaBalanceTrainer])
@pytest.mark.parametrize("model_name", ["bert", "gpt2"])
def test_way3_optim_name(tmp_path, model_name, trainer_cls):
    """optim="adabalancew" / --optim adabalance_amsbound: the stock Trainer builds AdaBalance."""
    if model_name == "bert":
        model, data, no_decay, decay = tiny_bert(), classification_data(), NO_DECAY_BERT, DECAY_BERT
        args = make_args(
            tmp_path, optim="adabalancew", weight_decay=0.01, optim_args="final_lr=0.05,gamma=1e-2"
        )
    else:
        model, data, no_decay, decay = tiny_gpt2(), lm_data(), NO_DECAY_GPT2, DECAY_GPT2
        (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
            [
                "--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu",
                "--disable_tqdm", "true", "--max_steps", "6", "--learning_rate", "1e-2",
                "--per_device_train_batch_size", "4", "--logging_steps", "2",
                "--save_strategy", "no", "--weight_decay", "0.01",
                "--optim", "adabalance_amsbound", "--optim_args", "final_lr=0.05",
            ]
        )  # fmt: skip
    before = snapshot(model)
    trainer = trainer_cls(model=model, args=args, train_dataset=data)
    trainer.train()
    optimizer = inner_optimizer(trainer)
    assert type(optimizer) is AdaBalance
    check_groups(model, optimizer, 0.01, no_decay, decay)
    group = optimizer.param_groups[0]
    assert group["base_lr"] == 1e-2 and group["final_lr"] == 0.05
    assert group["decoupled_weight_decay"] is (model_name == "bert")
    assert group["amsbound"] is (model_name == "gpt2")
    if model_name == "gpt2":
        assert all("max_exp_avg_sq" in optimizer.state[p] for p in group["params"])
    assert_trained(model, before)
    # AdaBalanceTrainer adds the diagnostics; the stock Trainer does not.
    diagnostics = any("adabalance/lower_bound" in e for e in trainer.state.log_history)
    assert diagnostics is (trainer_cls is AdaBalanceTrainer)


class TrainerSubclass(Trainer):
    """Another library's Trainer: its own override, which calls super() as overrides do."""

    # create_optimizer(self) in transformers 4, create_optimizer(self, model=None) in 5
    def create_optimizer(self, *args, **kwargs):
        self.created_by_subclass = True
        return super().create_optimizer(*args, **kwargs)


class AdaBalanceSubclass(AdaBalanceTrainer, TrainerSubclass):
    pass


@pytest.mark.parametrize("trainer_cls", [TrainerSubclass, AdaBalanceSubclass])
def test_a_trainer_subclass_builds_adabalance_for_the_names(tmp_path, trainer_cls):
    args = make_args(tmp_path, optim="adabalance_amsbound", max_steps=2)
    trainer = trainer_cls(model=tiny_bert(), args=args, train_dataset=classification_data())
    trainer.train()
    optimizer = inner_optimizer(trainer)
    assert type(optimizer) is AdaBalance and optimizer.param_groups[0]["amsbound"] is True
    assert trainer.created_by_subclass
    assert trainer_cls.get_optimizer_cls_and_kwargs(args)[0] is AdaBalance
    diagnostics = [
        cb
        for cb in trainer.callback_handler.callbacks
        if isinstance(cb, AdaBalanceDiagnosticsCallback)
    ]
    assert len(diagnostics) == (trainer_cls is AdaBalanceSubclass)


def test_seq2seq_trainer_builds_the_8bit_name(tmp_path):
    args = make_args(tmp_path, Seq2SeqTrainingArguments, optim="adabalancew_8bit",
                     optim_args="block_size=64", weight_decay=0.01)  # fmt: skip
    model = tiny_gpt2()
    optimizer = Seq2SeqTrainer(model=model, args=args).create_optimizer()
    assert type(optimizer) is AdaBalance8bit
    check_groups(model, optimizer, 0.01, NO_DECAY_GPT2, DECAY_GPT2)
    group = optimizer.param_groups[0]
    assert group["block_size"] == 64 and group["decoupled_weight_decay"] is True


CHECKS_CASES = {
    "subclass": {},
    "no_diagnostics": {"adabalance_diagnostics": False},
    "no_diagnostics_own_checks": {"adabalance_diagnostics": False, "own_checks": True},
    "own_checks": {"own_checks": True},
}


@pytest.mark.parametrize("options", list(CHECKS_CASES.values()), ids=list(CHECKS_CASES))
def test_the_checks_run_once_per_train(tmp_path, monkeypatch, options):
    calls = []
    real = checks_module.check_trainer_launch
    monkeypatch.setattr(checks_module, "check_trainer_launch", lambda a: calls.append(a) or real(a))

    class Deeper(AdaBalanceSubclass):
        pass

    options = dict(options)
    callbacks = [TrainerChecks()] if options.pop("own_checks", False) else []
    args = make_args(tmp_path, optim="adabalance", max_steps=1)
    trainer = Deeper(model=tiny_bert(), args=args, train_dataset=classification_data(),
                     callbacks=callbacks, **options)  # fmt: skip
    trainer.train()
    assert len(calls) == 1


def test_builtin_name_through_adabalance_trainer(tmp_path):
    model = tiny_bert()
    args = make_args(tmp_path, optim="adamw_torch", max_steps=2)
    trainer = AdaBalanceTrainer(model=model, args=args, train_dataset=classification_data())
    trainer.train()
    assert type(inner_optimizer(trainer)) is torch.optim.AdamW
    assert not any(key.startswith("adabalance/") for e in trainer.state.log_history for key in e)


@pytest.mark.parametrize(
    ("optim", "max_grad_norm", "optim_args", "warned"),
    [
        ("adabalance", 0.0, None, True),  # the fine-tuning settings, unclipped
        ("adabalance", 1.0, None, False),  # the Trainer's default clipping
        ("adabalance", 0.0, "gamma=1e-3", False),  # the paper's gamma: measured safe
        ("adamw_torch", 0.0, None, False),  # not AdaBalance's to judge
    ],
)
def test_unclipped_fine_tuning_settings_are_warned_about(
    tmp_path, optim, max_grad_norm, optim_args, warned
):
    args = make_args(
        tmp_path, optim=optim, optim_args=optim_args, max_grad_norm=max_grad_norm, max_steps=1
    )
    data = classification_data()
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=data, callbacks=[TrainerChecks()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    said = [str(w.message) for w in caught if "does not clip gradients" in str(w.message)]
    assert len(said) == int(warned), said
    if warned:
        assert said[0].startswith("max_grad_norm=0.0:") and "max_grad_norm=1.0" in said[0]
        assert "gamma=0.0001, beta3=0.9" in said[0] and "stability_envelope.md" in said[0]
