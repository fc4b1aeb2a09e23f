"""The *_8bit and *_4bit optimizer names in the Trainer: the optimizer they build, resume,
diagnostics."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import classification_data, inner_optimizer, make_args, tiny_bert
from test_optim_4bit import reference_decode as reference_decode_4bit
from test_optim_8bit import reference_decode
from test_transformers_resume import CountSteps, StopAt, assert_same_state
from transformers import BertForSequenceClassification, TrainerCallback

from adabalance_hf import FINE_TUNING_DEFAULTS, AdaBalance4bit, AdaBalance8bit, AdaBalanceTrainer
from adabalance_hf.integrations.transformers import OptimizerOptionError
from adabalance_hf.optim._step_scalars import step_scalars

N = 3
# The eager kernel: the compiled one is tested in test_optim_8bit.py, and its compile would
# double these tests' time.
EAGER = "fused=false"


def bert(seed: int = 0) -> BertForSequenceClassification:
    """Width 64: the embeddings and dense weights (>= 4,096 elements) get 8-bit state."""
    return tiny_bert(seed, hidden=64)


class KeepLogs(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def build(output_dir, optim: str, optim_args: str, *, save: bool, callbacks=()):
    args = make_args(
        output_dir,
        optim=optim,
        optim_args=optim_args,
        max_steps=2 * N,
        warmup_steps=1,
        weight_decay=0.01,
        learning_rate=1e-2,
        save_strategy="steps" if save else "no",
        save_steps=N,
        logging_steps=N,
    )
    return AdaBalanceTrainer(
        model=bert(), args=args, train_dataset=classification_data(n=16), callbacks=list(callbacks)
    )


def test_the_8bit_name_builds_adabalance8bit_with_the_fine_tuning_defaults(tmp_path):
    logs = KeepLogs()
    trainer = build(tmp_path, "adabalancew_8bit", f"block_size=64,{EAGER}", save=False,
                    callbacks=[logs])  # fmt: skip
    trainer.train()
    optimizer = inner_optimizer(trainer)
    assert type(optimizer) is AdaBalance8bit
    group = optimizer.param_groups[0]
    assert group["block_size"] == 64 and group["decoupled_weight_decay"] is True
    assert {key: group[key] for key in FINE_TUNING_DEFAULTS} == FINE_TUNING_DEFAULTS
    states = [optimizer.state[p] for g in optimizer.param_groups for p in g["params"]]
    quantized = [s for s in states if s["exp_avg"].dtype == torch.int8]
    numel = sum(s["exp_avg"].numel() for s in states)
    assert sum(s["exp_avg"].numel() for s in quantized) > 0.9 * numel

    assert_diagnostics_read_the_codes(optimizer, logs)


def assert_diagnostics_read_the_codes(optimizer, logs: KeepLogs) -> None:
    """The logged share of rates at the upper bound, recounted here from the codes of
    ``exp_avg_lr`` (8-bit, or 4-bit packed: one more dimension than the scales)."""
    logged = next(entry for entry in reversed(logs.logs) if "adabalance/frac_at_upper" in entry)
    at_upper = total = 0
    for g in optimizer.param_groups:
        beta1, beta2 = g["betas"]
        for p in g["params"]:
            state = optimizer.state[p]
            rate = state["exp_avg_lr"]
            if rate.dtype == torch.uint8:
                scale = state["exp_avg_lr_scale"]
                if rate.dim() == scale.dim() + 1:
                    rate = reference_decode_4bit("exp_avg_lr", rate, scale)
                else:
                    rate = reference_decode(rate, scale)
            bounds = step_scalars(float(state["step"]), lr=logged["learning_rate"],
                                  base_lr=g["base_lr"], beta1=beta1, beta2=beta2,
                                  final_lr=g["final_lr"], gamma=g["gamma"])  # fmt: skip
            at_upper += int(((rate >= bounds.upper) & (rate > bounds.lower)).sum())
            total += rate.numel()
    assert 0 < total and logged["adabalance/frac_at_upper"] == pytest.approx(
        at_upper / total, abs=2e-3
    )


def test_the_4bit_name_builds_adabalance4bit_whose_codes_the_diagnostics_read(tmp_path):
    logs = KeepLogs()
    trainer = build(tmp_path, "adabalancew_4bit", EAGER, save=False, callbacks=[logs])
    trainer.train()
    optimizer = inner_optimizer(trainer)
    assert type(optimizer) is AdaBalance4bit
    group = optimizer.param_groups[0]
    assert group["block_size"] == 32 and group["decoupled_weight_decay"] is True
    assert {key: group[key] for key in FINE_TUNING_DEFAULTS} == FINE_TUNING_DEFAULTS
    word_embeddings = trainer.model.bert.embeddings.word_embeddings.weight
    assert optimizer.state[word_embeddings]["exp_avg"].dim() == 3  # packed 4-bit codes
    assert_diagnostics_read_the_codes(optimizer, logs)


def test_block_size_on_a_name_without_8bit_state_says_which_names_take_it(tmp_path):
    with pytest.raises(
        OptimizerOptionError, match=r"unknown key 'block_size'.*optim=adabalance_8bit"
    ):
        build(tmp_path, "adabalancew", "block_size=64", save=False)  # at construction


@pytest.mark.parametrize(("optim", "code_dtype"), [("adabalancew_8bit", torch.int8),
                                                   ("adabalancew_4bit", torch.uint8)])  # fmt: skip
def test_a_trainer_resumed_from_its_checkpoint_ends_bitwise_where_one_run_ends(
    tmp_path, optim, code_dtype
):
    straight = build(tmp_path / "straight", optim, EAGER, save=False)
    straight.train()
    first = build(tmp_path / "halves", optim, EAGER, save=True, callbacks=[StopAt(N)])
    first.train()
    counter = CountSteps()
    second = build(tmp_path / "halves", optim, EAGER, save=False, callbacks=[counter])
    second.train(resume_from_checkpoint=str(tmp_path / "halves" / f"checkpoint-{N}"))
    assert counter.steps == N
    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), second.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    state_a = inner_optimizer(straight).state_dict()["state"]
    state_b = inner_optimizer(second).state_dict()["state"]
    assert state_b[0]["exp_avg"].dtype == code_dtype
    assert_same_state(state_a, state_b, "state")


def test_an_fp32_adabalance_checkpoint_resumes_with_8bit_state(tmp_path):
    first = build(tmp_path, "adabalancew", "", save=True, callbacks=[StopAt(N)])
    first.train()
    second = build(tmp_path, "adabalancew_8bit", EAGER, save=False)
    second.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{N}"))
    assert second.state.global_step == 2 * N
    optimizer = inner_optimizer(second)
    word_embeddings = second.model.bert.embeddings.word_embeddings.weight
    assert optimizer.state[word_embeddings]["exp_avg"].dtype == torch.int8
    assert float(optimizer.state[word_embeddings]["step"]) == 2 * N
