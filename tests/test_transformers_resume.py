"""Exact resume: 2N steps in one go equal N steps, a checkpoint and N more in a new Trainer."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import classification_data, inner_optimizer, make_args, tiny_bert
from transformers import Trainer, TrainerCallback

from adabalance_hf import (
    AdaBalance,
    AdaBalanceTrainer,
    adabalance_optimizer_kwargs,
    trainer_param_groups,
)
from adabalance_hf.optim import StateDictMismatchError

N = 3


class CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.steps += 1


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def build(route, output_dir, *, save, callbacks=()):
    # 16 rows, batch 4: 4 steps an epoch, so the resumed half crosses an epoch boundary.
    # Dropout stays on: the checkpoint's RNG state must carry it.
    model = tiny_bert()
    common = dict(
        max_steps=2 * N,
        warmup_steps=1,
        weight_decay=0.01,
        learning_rate=1e-2,
        save_strategy="steps" if save else "no",
        save_steps=N,
        logging_steps=N,
    )
    data = classification_data(n=16)
    if route != "optimizer_object":  # the name, in AdaBalanceTrainer or the stock Trainer
        args = make_args(
            output_dir, optim="adabalance_amsbound", optim_args="final_lr=0.05,gamma=1e-2", **common
        )
        trainer_cls = AdaBalanceTrainer if route == "adabalance_trainer" else Trainer
        return trainer_cls(model=model, args=args, train_dataset=data, callbacks=list(callbacks))
    args = make_args(output_dir, **common)
    optimizer = AdaBalance(
        trainer_param_groups(model, args.weight_decay),
        **adabalance_optimizer_kwargs(args, final_lr=0.05, gamma=1e-2),
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=data,
        optimizers=(optimizer, None),
        callbacks=list(callbacks),
    )


def assert_same_state(left: dict, right: dict, where: str = "") -> None:
    assert left.keys() == right.keys(), where
    for key in left:
        a, b = left[key], right[key]
        if isinstance(a, dict):
            assert_same_state(a, b, f"{where}/{key}")
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b), f"{where}/{key}"
        else:
            assert a == b, f"{where}/{key}"


@pytest.mark.parametrize("route", ["adabalance_trainer", "stock_trainer", "optimizer_object"])
def test_resume_is_bitwise_exact(tmp_path, route):
    straight = build(route, tmp_path / "straight", save=False)
    straight.train()

    first = build(route, tmp_path / "halves", save=True, callbacks=[StopAt(N)])
    first.train()
    assert first.state.global_step == N
    checkpoint = tmp_path / "halves" / f"checkpoint-{N}"
    assert (checkpoint / "optimizer.pt").is_file()

    counter = CountSteps()
    second = build(route, tmp_path / "halves", save=False, callbacks=[counter])
    second.train(resume_from_checkpoint=str(checkpoint))
    assert second.state.global_step == 2 * N
    assert counter.steps == N  # it resumed: only the second half was trained here

    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), second.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    opt_a, opt_b = inner_optimizer(straight), inner_optimizer(second)
    assert type(opt_b) is AdaBalance
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert_same_state(state_a["state"], state_b["state"], "state")
    for group_a, group_b in zip(state_a["param_groups"], state_b["param_groups"], strict=True):
        assert group_a == group_b
    assert state_b["param_groups"][0]["base_lr"] == 1e-2
    assert state_b["param_groups"][0]["amsbound"] is (route != "optimizer_object")
    assert float(state_b["state"][0]["step"]) == 2 * N


def test_resuming_an_adamw_checkpoint_by_name_says_what_to_do_in_a_trainer(tmp_path):
    common = dict(max_steps=2, save_strategy="steps", save_steps=2)
    adamw = Trainer(
        model=tiny_bert(),
        args=make_args(tmp_path, **common),
        train_dataset=classification_data(n=8),
    )
    adamw.train()
    checkpoint = tmp_path / "checkpoint-2"
    args = make_args(tmp_path, optim="adabalance", **common)
    trainer = AdaBalanceTrainer(
        model=tiny_bert(), args=args, train_dataset=classification_data(n=8)
    )
    with pytest.raises(StateDictMismatchError) as error:
        trainer.train(resume_from_checkpoint=str(checkpoint))
    message = str(error.value)
    assert f"resume_from_checkpoint='{checkpoint}'" in message
    assert "--optim adamw_torch" in message and "from_pretrained" in message
    assert "without resume_from_checkpoint" in message
