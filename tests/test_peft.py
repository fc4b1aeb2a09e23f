"""LoRA (PEFT) with AdaBalance: by name in TRL's own trainers, and the optimizer-before-wrapping
mistake caught by ``TrainerChecks`` (which ``AdaBalanceTrainer`` and the diagnostics callback
install)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from _trl_fixtures import (
    LORA_TARGETS,
    dpo_dataset,
    inner_optimizer,
    lm_dataset,
    sft_dataset,
    snapshot,
    tiny_llama,
    tokenizer,
    trl_kwargs,
)
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from adabalance_hf import AdaBalance, AdaBalanceTrainer, adabalance_optimizer_kwargs
from adabalance_hf.integrations.transformers import AdaBalanceDiagnosticsCallback, TrainerChecks

STEPS = 3


def lora_config() -> LoraConfig:
    return LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )


def sft_trainer(output_dir, model, *, optim="adabalance", **trainer_kwargs):
    args = SFTConfig(**trl_kwargs(output_dir, optim=optim, max_steps=STEPS))
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(8),
        processing_class=tokenizer(),
        **trainer_kwargs,
    )


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def moved(model, before) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


def assert_wrong_order_error(error: BaseException) -> None:
    """The message names the cause (built before the PEFT wrapping) and the fix."""
    message = str(error)
    assert "before" in message.lower(), message
    assert "optimizer_cls_and_kwargs" in message, message


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_lora_by_name_trains_the_adapters_only(kind, tmp_path):
    if kind == "sft":
        trainer = sft_trainer(tmp_path, tiny_llama(), peft_config=lora_config())
    else:  # ref_model=None: with PEFT, DPO's reference is the model with adapters disabled
        args = DPOConfig(**trl_kwargs(tmp_path, optim="adabalance", max_steps=STEPS))
        trainer = DPOTrainer(
            model=tiny_llama(),
            args=args,
            train_dataset=dpo_dataset(8),
            processing_class=tokenizer(),
            peft_config=lora_config(),
        )
        assert trainer.ref_model is None
    model = trainer.model
    lora = trainable(model)
    assert lora and all(".lora_A." in n or ".lora_B." in n for n in lora)
    assert len(lora) == 2 * len(LORA_TARGETS) * 2  # A and B, four projections, two layers
    before = snapshot(model)
    trainer.train()
    # Every adapter moved (B starts at zero, A follows once B is nonzero); no base weight did.
    assert moved(model, before) == set(lora)
    optimizer = inner_optimizer(trainer)
    assert type(optimizer) is AdaBalance
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in lora.values()}


def test_optimizer_built_before_wrapping_raises(tmp_path):
    model = tiny_llama()
    optimizer = AdaBalance(model.parameters(), lr=1e-2)  # the bare model's weights
    trainer = sft_trainer(
        tmp_path,
        model,
        optim="adamw_torch",
        peft_config=lora_config(),
        optimizers=(optimizer, None),
        callbacks=[TrainerChecks()],
    )
    before = snapshot(trainer.model)
    with pytest.raises(ValueError) as raised:
        trainer.train()
    assert_wrong_order_error(raised.value)
    assert not moved(trainer.model, before)  # raised at train start, before any step
    assert trainer.state.global_step == 0


def test_optimizer_missing_some_trainable_parameters_warns(tmp_path):
    model = get_peft_model(tiny_llama(), lora_config())
    some = [p for name, p in model.named_parameters() if ".q_proj.lora_" in name]
    missing = len(trainable(model)) - len(some)
    assert (len(some), missing) == (4, 12)
    trainer = sft_trainer(
        tmp_path,
        model,
        optim="adamw_torch",
        optimizers=(AdaBalance(some, lr=1e-2), None),
        callbacks=[TrainerChecks()],
    )
    before = snapshot(model)
    with pytest.warns(UserWarning, match=rf"\b{missing}\b") as record:
        trainer.train()
    messages = [str(w.message) for w in record if re.search(rf"\b{missing}\b", str(w.message))]
    # The first missing names: layer 0's k_proj adapters come right after the held q_proj ones.
    assert any("layers.0.self_attn.k_proj.lora_A" in m for m in messages), messages
    assert trainer.state.global_step == STEPS  # a warning, not an error
    assert moved(model, before) == {n for n, p in model.named_parameters() if ".q_proj.lora_" in n}


def test_optimizer_cls_and_kwargs_with_peft_config_trains_the_adapters(tmp_path):
    args = SFTConfig(**trl_kwargs(tmp_path, max_steps=STEPS, weight_decay=0.01))
    trainer = SFTTrainer(
        model=tiny_llama(),
        args=args,
        train_dataset=sft_dataset(8),
        processing_class=tokenizer(),
        peft_config=lora_config(),
        optimizer_cls_and_kwargs=(AdaBalance, adabalance_optimizer_kwargs(args)),
        callbacks=[TrainerChecks()],
    )
    model = trainer.model
    lora = trainable(model)
    before = snapshot(model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.train()
    # No missing-parameters warning (it would list adapter names).
    assert not [w for w in record if "lora_" in str(w.message)], [str(w.message) for w in record]
    assert moved(model, before) == set(lora)
    optimizer = inner_optimizer(trainer)
    assert type(optimizer) is AdaBalance
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in lora.values()}
    # The kwargs carried learning_rate (the scheduler has since decayed "lr" to 0).
    assert optimizer.param_groups[0]["initial_lr"] == args.learning_rate == 1e-2


@pytest.mark.parametrize("route", ["adabalance_trainer", "diagnostics", "checks"])
def test_the_wrong_order_is_caught_in_a_plain_trainer(tmp_path, route):
    model = tiny_llama()
    optimizer = AdaBalance(model.parameters(), lr=1e-2)  # before wrapping: base weights only
    peft_model = get_peft_model(model, lora_config())
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        per_device_train_batch_size=4,
        max_steps=STEPS,
        save_strategy="no",
        seed=123,
    )
    trainer_cls = AdaBalanceTrainer if route == "adabalance_trainer" else Trainer
    callbacks = {"adabalance_trainer": [], "diagnostics": [AdaBalanceDiagnosticsCallback()],
                 "checks": [TrainerChecks()]}[route]  # fmt: skip
    trainer = trainer_cls(
        model=peft_model,
        args=args,
        train_dataset=lm_dataset(8),
        optimizers=(optimizer, None),
        callbacks=callbacks,
    )
    before = snapshot(peft_model)
    with pytest.raises(ValueError) as raised:
        trainer.train()
    assert_wrong_order_error(raised.value)
    assert not moved(peft_model, before)
