"""AtomicCheckpointsMixin, in process: manifests, best model, rotation, ENOSPC, any Trainer."""

from __future__ import annotations

import errno
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from _hf_helpers import inner_optimizer, lm_data, make_args, tiny_gpt2
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

import adabalance_hf  # noqa: F401  (registers optim="adabalance" with transformers)
from adabalance_hf.checkpoint import (
    MANIFEST_NAME,
    AtomicCheckpointsMixin,
    CheckpointError,
    ResumeError,
    rotate_trainer_checkpoints,
    verify_checkpoint,
)
from adabalance_hf.integrations.transformers import AdaBalanceTrainer

STEPS = 6


class AtomicAdaBalanceTrainer(AtomicCheckpointsMixin, AdaBalanceTrainer):
    pass


class AtomicPlainTrainer(AtomicCheckpointsMixin, Trainer):
    """No AdaBalance: the mixin on the stock Trainer."""


def build(output_dir: Path, callbacks=(), trainer_cls=AtomicAdaBalanceTrainer, **overrides):
    # tiny_gpt2 keeps GPT-2's dropout (0.1): resuming must restore the RNG state exactly.
    kwargs = dict(
        optim="adabalance" if issubclass(trainer_cls, AdaBalanceTrainer) else "adamw_torch",
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=2,
        logging_steps=2,
        per_device_train_batch_size=4,
    )
    kwargs.update(overrides)
    return trainer_cls(
        model=tiny_gpt2(),
        args=make_args(output_dir, **kwargs),  # stock TrainingArguments
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


class TrainerSubclass(Trainer):
    pass


def test_mixin_after_the_trainer_is_refused_with_the_fix():
    with pytest.raises(TypeError) as error:

        class MixinLast(Trainer, AtomicCheckpointsMixin):
            pass

    message = str(error.value)
    assert "after transformers.Trainer" in message
    assert "class MixinLast(AtomicCheckpointsMixin, Trainer)" in message
    with pytest.raises(TypeError, match=r"class Late\(AtomicCheckpointsMixin, TrainerSubclass\)"):

        class Late(TrainerSubclass, AtomicCheckpointsMixin):
            pass

    class Subclass(AtomicAdaBalanceTrainer):  # the mixin stays before Trainer: accepted
        pass

    mro = Subclass.__mro__
    assert mro.index(AtomicCheckpointsMixin) < mro.index(Trainer)


@pytest.fixture(scope="module", params=[AtomicAdaBalanceTrainer, AtomicPlainTrainer])
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
    trainer = build(tmp_path, trainer_cls=type(reference[0]))
    with pytest.raises(ResumeError) as error:
        trainer.train(resume_from_checkpoint=str(damaged))
    assert isinstance(error.value, CheckpointError) and error.value.path == damaged
    message = str(error.value)
    assert f"cannot resume from {damaged}: optimizer.pt has 9 bytes" in message
    previous = f"resume_from_checkpoint='{tmp_path / 'checkpoint-4'}'"
    assert previous in message and "resume_from_checkpoint='auto'" in message
    assert trainer.state.global_step == 0  # refused before any training
    sent = pickle.loads(pickle.dumps(error.value))  # how the other processes get it
    assert (type(sent), str(sent), sent.path, sent.reason) == (
        ResumeError,
        message,
        damaged,
        error.value.reason,
    )
    with pytest.raises(ResumeError, match="no such folder"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-99"))
    staged = tmp_path / ".checkpoint-8.incomplete" / "checkpoint-8"  # a save killed before commit
    shutil.copytree(tmp_path / "checkpoint-4", staged)
    (staged / MANIFEST_NAME).unlink()
    for path in (staged, staged.parent):
        with pytest.raises(ResumeError, match="staging folder of a save that did not finish"):
            trainer.train(resume_from_checkpoint=str(path))
    # True skips the damaged checkpoint-6 (and the staging folder): checkpoint-4 it is
    assert trainer._atomic_resume_checkpoint(True) == str(tmp_path / "checkpoint-4")


def test_checkpoint_of_plain_trainer_loads_with_a_warning_and_is_never_rotated(tmp_path, caplog):
    plain = make_args(
        tmp_path, optim="adamw_torch", max_steps=2, save_strategy="steps", save_steps=2
    )
    Trainer(model=tiny_gpt2(), args=plain, train_dataset=lm_data(n=12)).train()
    legacy = tmp_path / "checkpoint-2"  # no manifest: written by transformers.Trainer
    assert (legacy / "trainer_state.json").is_file() and not (legacy / MANIFEST_NAME).exists()
    trainer = build(tmp_path, trainer_cls=AtomicPlainTrainer, max_steps=4)
    with caplog.at_level(logging.WARNING, logger="adabalance_hf"):
        assert trainer._atomic_resume_checkpoint("auto") is None  # auto only takes verified
        assert "pass its path" in caplog.text and "starting from scratch" in caplog.text
        caplog.clear()
        trainer.train(resume_from_checkpoint=str(legacy))
    assert "cannot be verified" in caplog.text
    assert trainer.state.global_step == 4
    assert checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4"]  # the legacy one is kept
    verify_checkpoint(tmp_path / "checkpoint-4")
    (tmp_path / ".checkpoint-6.incomplete").mkdir()
    assert rotate_trainer_checkpoints(tmp_path, None, None) == [
        tmp_path / ".checkpoint-6.incomplete"
    ]
    assert checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4"]
    (legacy / "trainer_state.json").unlink()  # neither a manifest nor a finished save
    with pytest.raises(ResumeError, match=f"no {MANIFEST_NAME}"):
        trainer._atomic_resume_checkpoint(str(legacy))
