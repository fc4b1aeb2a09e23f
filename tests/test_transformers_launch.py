"""The launch check (``TrainerChecks``, which ``AdaBalanceTrainer`` installs) stops a 2-process
launch that built worlds of one before its first step.

What ``accelerate launch --config_file recipes/configs/multi_cpu.yaml train.py`` does on a machine
without GPUs when the script forgets ``--use_cpu true``: two processes, each a world of size one,
each training on all the data into the same output folder (a plain Trainer exits 0 having trained
twice; with checkpoints rank 1 used to die in the checkpoint code).
"""

from __future__ import annotations

import pytest
import torch
from _dist_helpers import needs_gloo, run_workers

pytestmark = pytest.mark.slow  # 2 spawned processes per test, each importing transformers
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the trap needs a GPU-less machine")


def _train_worker(rank: int, world: int, use_cpu: bool, out: str, stock: bool = False) -> dict:
    from _hf_helpers import args_kwargs, classification_data, tiny_bert
    from transformers import Trainer, TrainingArguments

    from adabalance_hf import AdaBalanceTrainer, TrainerChecks
    from adabalance_hf.distributed import DistributedSetupError

    overrides = dict(optim="adabalance", max_steps=2, save_strategy="steps", save_steps=1)
    args = TrainingArguments(**args_kwargs(out, use_cpu=use_cpu, **overrides))
    # The stock Trainer gets the check from the callback; AdaBalanceTrainer installs it itself.
    trainer_cls, callbacks = (Trainer, [TrainerChecks()]) if stock else (AdaBalanceTrainer, [])
    trainer = trainer_cls(
        model=tiny_bert(), args=args, train_dataset=classification_data(), callbacks=callbacks
    )
    try:
        trainer.train()
    except DistributedSetupError as error:
        return {"error": str(error), "steps": trainer.state.global_step, "world": args.world_size}
    return {"error": None, "steps": trainer.state.global_step, "world": args.world_size}


@needs_gloo
@cpu_only
@pytest.mark.parametrize("stock", [False, True], ids=["adabalance_trainer", "stock_with_checks"])
def test_two_processes_without_use_cpu_stop_before_the_first_step(tmp_path, stock):
    results = run_workers(_train_worker, False, str(tmp_path / "out"), stock, init=False)
    for result in results:
        assert result["world"] == 1 and result["steps"] == 0
        assert "`--use_cpu true`" in result["error"] and "output_dir" in result["error"]
    assert not list((tmp_path / "out").glob("checkpoint-*"))


@needs_gloo
@cpu_only
def test_two_processes_with_use_cpu_train_together(tmp_path):
    results = run_workers(_train_worker, True, str(tmp_path / "out"), init=False)
    assert results == [{"error": None, "steps": 2, "world": 2}] * 2
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == [
        "checkpoint-1",
        "checkpoint-2",
    ]
