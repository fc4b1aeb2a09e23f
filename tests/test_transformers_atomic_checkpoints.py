"""AtomicCheckpointsMixin, in process: manifests, best model, rotation, ENOSPC, any Trainer."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from _hf_helpers import inner_optimizer, lm_data, make_args, tiny_gpt2
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from adabalance_hf.checkpoint import MANIFEST_NAME, CheckpointError, verify_checkpoint
from adabalance_hf.integrations.transformers import (
    AdaBalanceTrainer,
    AdaBalanceTrainingArguments,
    AtomicCheckpointsMixin,
)
from adabalance_hf.integrations.transformers.checkpointing import (
    resolve_resume_checkpoint,
    rotate_trainer_checkpoints,
)

STEPS = 6


class AtomicAdaBalanceTrainer(AtomicCheckpointsMixin, AdaBalanceTrainer):
    pass


class PlainTrainerMixinLast(Trainer, AtomicCheckpointsMixin):
    """No AdaBalance, and the mixin after Trainer (whose methods never call super())."""


def build(output_dir: Path, callbacks=(), trainer_cls=AtomicAdaBalanceTrainer, **overrides):
    # tiny_gpt2 keeps GPT-2's dropout (0.1): resuming must restore the RNG state exactly.
    kwargs = dict(
        optim="adabalance",
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=2,
        logging_steps=2,
        per_device_train_batch_size=4,
    )
    kwargs.update(overrides)
    if trainer_cls is PlainTrainerMixinLast:
        kwargs["optim"] = "adamw_torch"
        args = make_args(output_dir, **kwargs)
    else:
        args = make_args(output_dir, AdaBalanceTrainingArguments, **kwargs)
    return trainer_cls(
        model=tiny_gpt2(),
        args=args,
        train_dataset=lm_data(n=12),  # 3 steps an epoch: the runs cross epoch boundaries
        eval_dataset=lm_data(n=8, seed=3),
        callbacks=list(callbacks),
    )


def checkpoints(root: Path) -> list[str]:
    found = [p.name for p in root.iterdir() if p.name.startswith("checkpoint-")]
    return sorted(found, key=lambda name: int(name.split("-")[1]))


def hidden(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


def assert_same_training_state(a: AdaBalanceTrainer, b: AdaBalanceTrainer) -> None:
    for (name, x), (_, y) in zip(
        a.model.named_parameters(), b.model.named_parameters(), strict=True
    ):
        assert torch.equal(x, y), name
    state_a, state_b = inner_optimizer(a).state_dict(), inner_optimizer(b).state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    assert state_a["state"].keys() == state_b["state"].keys()
    for index, slots in state_a["state"].items():
        assert slots.keys() == state_b["state"][index].keys()
        for key, value in slots.items():
            assert torch.equal(value, state_b["state"][index][key]), (index, key)


@pytest.fixture(scope="module", params=[AtomicAdaBalanceTrainer, PlainTrainerMixinLast])
def reference(request, tmp_path_factory):
    """An uninterrupted run, started with resume_from_checkpoint='auto' in an empty folder."""
    out = tmp_path_factory.mktemp("reference")
    trainer = build(out, trainer_cls=request.param)
    trainer.train(resume_from_checkpoint="auto")
    return trainer, out


def test_auto_without_checkpoint_starts_from_scratch(tmp_path, caplog):
    trainer = build(tmp_path, max_steps=1, save_strategy="no")
    with caplog.at_level(logging.WARNING, logger="adabalance_hf"):
        trainer.train(resume_from_checkpoint="auto")
    assert trainer.state.global_step == 1
    assert "no complete checkpoint in" in caplog.text and "starting from scratch" in caplog.text
    with pytest.raises(ValueError, match="No valid checkpoint found in output directory"):
        build(tmp_path).train(resume_from_checkpoint=True)  # True keeps transformers' error


def test_every_checkpoint_has_a_verified_manifest_and_no_staging_is_left(reference):
    _, out = reference
    assert checkpoints(out) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert hidden(out) == []
    for name in checkpoints(out):
        metadata = verify_checkpoint(out / name)
        assert metadata == {"global_step": int(name.split("-")[1])}
        listed = json.loads((out / name / MANIFEST_NAME).read_text())["files"]
        assert {"optimizer.pt", "rng_state.pth", "trainer_state.json"} <= listed.keys()


class Checkpoints(TrainerCallback):
    """What is on disk after each save (on_save runs after the commit and the rotation)."""

    def __init__(self, root: Path) -> None:
        self.root, self.seen = root, []

    def on_save(self, args, state, control, **kwargs):
        self.seen.append((state.global_step, checkpoints(self.root), hidden(self.root)))
        verify_checkpoint(self.root / f"checkpoint-{state.global_step}")


def test_best_model_and_rotation(tmp_path):
    scores = iter([5.0, 1.0, 2.0, 3.0])  # the first evaluation (step 2) is the best

    def compute_metrics(_):
        return {"score": next(scores)}

    seen = Checkpoints(tmp_path)
    trainer = build(
        tmp_path,
        callbacks=[seen],
        max_steps=8,
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
        save_total_limit=2,
    )
    trainer.compute_metrics = compute_metrics
    trainer.train()
    best = str(tmp_path / "checkpoint-2")
    assert trainer.state.best_model_checkpoint == best
    # transformers' count: the best one takes the place of an older one
    assert seen.seen == [
        (2, ["checkpoint-2"], []),
        (4, ["checkpoint-2", "checkpoint-4"], []),
        (6, ["checkpoint-2", "checkpoint-6"], []),
        (8, ["checkpoint-2", "checkpoint-8"], []),
    ]
    # the trainer_state.json inside each checkpoint names the final folder, never the staging one
    for name in checkpoints(tmp_path):
        state = json.loads((tmp_path / name / "trainer_state.json").read_text())
        assert state["best_model_checkpoint"] == best
    # load_best_model_at_end loaded checkpoint-2's weights
    saved = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    for name, param in trainer.model.named_parameters():
        if name in saved:
            assert torch.equal(param, saved[name]), name


def test_enospc_mid_save_keeps_the_previous_checkpoint_and_auto_resumes(
    reference, tmp_path, monkeypatch, caplog
):
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            calls.append(f)
            if len(calls) == 2:  # the second checkpoint: half the file, then the disk is full
                real_save(obj, f, *args, **kwargs)
                Path(f).write_bytes(Path(f).read_bytes()[: Path(f).stat().st_size // 2])
                raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    trainer_cls = type(reference[0])
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        build(tmp_path, trainer_cls=trainer_cls).train()
    monkeypatch.setattr(torch, "save", real_save)
    assert ".checkpoint-4.incomplete" in str(calls[1])  # it was writing into staging
    assert checkpoints(tmp_path) == ["checkpoint-2"] and hidden(tmp_path) == []
    verify_checkpoint(tmp_path / "checkpoint-2")

    resumed = build(tmp_path, trainer_cls=trainer_cls)
    with caplog.at_level(logging.WARNING, logger="adabalance_hf"):
        resumed.train(resume_from_checkpoint="auto")
    assert f"resuming from {tmp_path / 'checkpoint-2'}" in caplog.text
    assert_same_training_state(reference[0], resumed)
    assert checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_damaged_explicit_checkpoint_is_a_clear_error(reference, tmp_path):
    shutil.copytree(reference[1], tmp_path, dirs_exist_ok=True)
    damaged = tmp_path / "checkpoint-6"
    (damaged / "optimizer.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError) as error:
        build(tmp_path, trainer_cls=type(reference[0])).train(resume_from_checkpoint=str(damaged))
    message = str(error.value)
    assert str(damaged) in message and "optimizer.pt has 9 bytes" in message
    assert f"Fix: resume from {tmp_path / 'checkpoint-4'}" in message and "'auto'" in message
    with pytest.raises(ValueError, match="no such folder"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-99"), tmp_path)
    staged = tmp_path / ".checkpoint-8.incomplete" / "checkpoint-8"  # a save killed before commit
    shutil.copytree(tmp_path / "checkpoint-4", staged)
    (staged / MANIFEST_NAME).unlink()
    for path in (staged, staged.parent):
        with pytest.raises(CheckpointError, match="staging folder of a save that did not finish"):
            resolve_resume_checkpoint(str(path), tmp_path)


def test_checkpoint_of_plain_trainer_loads_with_a_warning_and_is_never_rotated(tmp_path, caplog):
    legacy = tmp_path / "checkpoint-3"  # no manifest: written by transformers.Trainer
    legacy.mkdir()
    (legacy / "trainer_state.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="adabalance_hf"):
        assert resolve_resume_checkpoint(str(legacy), tmp_path) == str(legacy)
        assert resolve_resume_checkpoint("auto", tmp_path) is None  # auto only takes verified
    assert "cannot be verified" in caplog.text and "pass its path" in caplog.text
    (tmp_path / ".checkpoint-4.incomplete").mkdir()
    assert rotate_trainer_checkpoints(tmp_path, None, None) == [
        tmp_path / ".checkpoint-4.incomplete"
    ]
    assert checkpoints(tmp_path) == ["checkpoint-3"]
