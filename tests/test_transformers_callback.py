"""The diagnostics callback: AdaBalance's bounds and the fractions of elements at them, in logs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _hf_helpers import classification_data, inner_optimizer, make_args, tiny_bert
from transformers import Trainer
from transformers.trainer_callback import DefaultFlowCallback, PrinterCallback

from adabalance_hf import AdaBalance, AdaBalanceTrainer
from adabalance_hf.integrations.transformers import (
    AdaBalanceDiagnosticsCallback,
    add_diagnostics_callback,
)
from adabalance_hf.integrations.transformers import callback as callback_module

KEYS = ("lower_bound", "upper_bound", "frac_at_lower", "frac_between", "frac_at_upper")
LR, FINAL_LR, GAMMA = 1e-2, 0.1, 0.1


def train(tmp_path, *, optim_args, max_steps=6, logging_steps=1, optim="adabalance"):
    args = make_args(
        tmp_path,
        optim=optim,
        optim_args=optim_args,
        max_steps=max_steps,
        logging_steps=logging_steps,
        learning_rate=LR,
    )
    trainer = AdaBalanceTrainer(model=tiny_bert(), args=args, train_dataset=classification_data())
    trainer.train()
    return trainer, [e for e in trainer.state.log_history if "loss" in e]


def oracle_bounds(step, lr):
    """Written out independently of the library: final_lr * lr / base_lr, AdaBound's schedule."""
    rate = FINAL_LR * lr / LR
    return rate * (1 - 1 / (GAMMA * step + 1)), rate * (1 + 1 / (GAMMA * step))


def test_bounds_in_logs_follow_the_scheduler(tmp_path):
    _, logs = train(tmp_path, optim_args=f"final_lr={FINAL_LR},gamma={GAMMA}")
    assert [e["step"] for e in logs] == [1, 2, 3, 4, 5, 6]
    for entry in logs:
        # "learning_rate" is the lr the step used, before the scheduler moved it on
        lower, upper = oracle_bounds(entry["step"], entry["learning_rate"])
        assert entry["adabalance/lower_bound"] == pytest.approx(lower, rel=1e-12)
        assert entry["adabalance/upper_bound"] == pytest.approx(upper, rel=1e-12)
        fractions = [entry[f"adabalance/{k}"] for k in KEYS[2:]]
        assert all(0.0 <= f <= 1.0 for f in fractions)
        assert sum(fractions) == pytest.approx(1.0)
    # linear decay: lr falls every step, and with it the bounds
    uppers = [e["adabalance/upper_bound"] for e in logs]
    assert all(b < a for a, b in itertools.pairwise(uppers))
    assert logs[-1]["adabalance/lower_bound"] < logs[2]["adabalance/lower_bound"]


def test_fractions_match_the_optimizer_state(tmp_path):
    trainer, logs = train(tmp_path, optim_args=f"final_lr={FINAL_LR},gamma={GAMMA}")
    optimizer = inner_optimizer(trainer)
    low = up = total = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            lower, upper = oracle_bounds(float(state["step"]), logs[-1]["learning_rate"])
            rate = state["exp_avg_lr"]
            low += int((rate <= lower).sum())
            up += int((rate >= upper).sum())
            total += rate.numel()
    last = logs[-1]
    assert last["adabalance/frac_at_lower"] == low / total
    assert last["adabalance/frac_at_upper"] == up / total
    assert last["adabalance/frac_between"] == pytest.approx((total - low - up) / total)


@pytest.mark.parametrize(("final_lr", "where"), [(1e9, "frac_at_lower"), (1e-12, "frac_at_upper")])
def test_fractions_at_the_extremes(tmp_path, final_lr, where):
    # a huge final rate puts every element under the lower bound; a tiny one above the upper
    _, logs = train(tmp_path, optim_args=f"final_lr={final_lr},gamma=0.5", max_steps=2)
    assert logs[-1][f"adabalance/{where}"] == 1.0
    assert logs[-1]["adabalance/frac_between"] == 0.0


def test_computed_only_on_logging_steps(tmp_path, monkeypatch):
    calls = []
    real = callback_module.adabalance_diagnostics

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(callback_module, "adabalance_diagnostics", counting)
    trainer, logs = train(tmp_path, optim_args=None, logging_steps=3)
    assert len(calls) == 2
    assert [e["step"] for e in logs] == [3, 6]
    assert all("adabalance/lower_bound" in e for e in logs)
    summary = trainer.state.log_history[-1]
    assert "train_loss" in summary and "adabalance/lower_bound" not in summary


def test_no_upper_bound_when_gamma_is_zero(tmp_path):
    _, logs = train(tmp_path, optim_args="gamma=0", max_steps=2)
    assert logs[-1]["adabalance/lower_bound"] == 0.0
    assert math.isinf(logs[-1]["adabalance/upper_bound"])
    assert logs[-1]["adabalance/frac_at_upper"] == 0.0


def test_with_a_plain_trainer(tmp_path):
    model = tiny_bert()
    args = make_args(tmp_path, max_steps=2)
    optimizer = AdaBalance(model.parameters(), lr=args.learning_rate)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=classification_data(),
        optimizers=(optimizer, None),
        callbacks=[AdaBalanceDiagnosticsCallback()],
    )
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert all(f"adabalance/{key}" in e for e in logs for key in KEYS)


def test_add_diagnostics_callback_position_and_no_duplicates(tmp_path):
    trainer = Trainer(
        model=tiny_bert(),
        args=make_args(tmp_path),
        callbacks=[AdaBalanceDiagnosticsCallback()],
    )
    installed = add_diagnostics_callback(trainer)
    add_diagnostics_callback(trainer)
    callbacks = trainer.callback_handler.callbacks
    assert sum(isinstance(cb, AdaBalanceDiagnosticsCallback) for cb in callbacks) == 1
    position = callbacks.index(installed)
    assert isinstance(callbacks[position - 1], DefaultFlowCallback)
    assert position < next(i for i, cb in enumerate(callbacks) if isinstance(cb, PrinterCallback))
    adabalance_trainer = AdaBalanceTrainer(model=tiny_bert(), args=make_args(tmp_path))
    assert any(
        isinstance(cb, AdaBalanceDiagnosticsCallback)
        for cb in adabalance_trainer.callback_handler.callbacks
    )
    quiet = AdaBalanceTrainer(
        model=tiny_bert(), args=make_args(tmp_path), adabalance_diagnostics=False
    )
    assert not any(
        isinstance(cb, AdaBalanceDiagnosticsCallback) for cb in quiet.callback_handler.callbacks
    )


def test_diagnostics_reject_other_optimizers():
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(TypeError, match="AdaBalance"):
        callback_module.adabalance_diagnostics(sgd)
