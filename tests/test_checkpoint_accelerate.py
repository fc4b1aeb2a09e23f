"""The accelerate helpers of ``adabalance_hf.checkpoint``, in one process: save, load, resume
resolution and SIGINT/SIGTERM. Through the recipes (killed and resumed bitwise):
tests/test_recipe_glue_resume.py and tests/test_recipe_gpt2_resume.py.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from adabalance_hf import AdaBalance
from adabalance_hf.checkpoint import (
    PROGRESS_NAME,
    CheckpointSaveError,
    ResumeError,
    StopSignals,
    load_accelerate_checkpoint,
    resolve_resume_checkpoint,
    save_accelerate_checkpoint,
    verify_checkpoint,
)


def _setup():
    """A model, AdaBalance and a scheduler prepared by a CPU Accelerator, seeded."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    optimizer = AdaBalance(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return accelerator, model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):  # the data and dropout draw from the global RNG, saved with the rest
        loss = model(torch.randn(4, 6)).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def test_a_run_saved_and_loaded_midway_ends_bitwise_as_the_uninterrupted_one(
    tmp_path, fresh_accelerate
) -> None:
    accelerator, model, optimizer, scheduler = _setup()
    _train(model, optimizer, scheduler, 6)
    reference = [p.detach().clone() for p in model.parameters()]

    fresh_accelerate()
    accelerator, model, optimizer, scheduler = _setup()
    _train(model, optimizer, scheduler, 3)
    saved = save_accelerate_checkpoint(
        accelerator, tmp_path, 3, progress={"epoch": 1}, metadata={"task": "toy"}, log=print
    )
    assert saved == tmp_path / "step_3"
    assert verify_checkpoint(saved)["step"] == 3
    _train(model, optimizer, scheduler, 2)  # steps the reload must undo

    assert load_accelerate_checkpoint(accelerator, saved) == {"epoch": 1}
    _train(model, optimizer, scheduler, 3)
    for param, expected in zip(model.parameters(), reference, strict=True):
        assert torch.equal(param.detach(), expected)


def test_rotation_keeps_the_newest_and_logs_what_it_deleted(tmp_path, fresh_accelerate) -> None:
    accelerator, *_ = _setup()
    logged: list[str] = []
    for step in (1, 2, 3):
        save_accelerate_checkpoint(accelerator, tmp_path, step, save_total_limit=2,
                                   log=logged.append)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "step_2", "step_3",
    ]  # fmt: skip
    assert logged == [f"deleted checkpoint {tmp_path / 'step_1'} (save_total_limit 2)"]
    assert not (tmp_path / "step_3" / PROGRESS_NAME).exists()  # no progress given
    assert load_accelerate_checkpoint(accelerator, tmp_path / "step_3") == {}


def test_a_failed_save_commits_nothing_and_names_the_last_good_checkpoint(
    tmp_path, monkeypatch, fresh_accelerate
) -> None:
    accelerator, *_ = _setup()
    good = save_accelerate_checkpoint(accelerator, tmp_path, 1)

    def disk_full(folder: str) -> None:
        (Path(folder) / "half_written.bin").write_bytes(b"x")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    with pytest.raises(CheckpointSaveError) as error:
        save_accelerate_checkpoint(accelerator, tmp_path, 2)
    message = str(error.value)
    assert (
        "No space left on device" in message and f"newest complete checkpoint is {good}" in message
    )
    assert "--resume_from_checkpoint auto" in message
    assert not (tmp_path / "step_2").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["step_1"]
    verify_checkpoint(good)


def test_auto_resume_takes_the_newest_complete_checkpoint_or_starts_fresh(
    tmp_path, fresh_accelerate
) -> None:
    logged: list[str] = []
    assert resolve_resume_checkpoint("auto", tmp_path, log=logged.append) is None
    assert logged == [f"--resume_from_checkpoint auto: no complete checkpoint in {tmp_path}; "
                      "starting from scratch"]  # fmt: skip
    accelerator, *_ = _setup()
    for step in (2, 4):
        save_accelerate_checkpoint(accelerator, tmp_path, step, progress={"step": step})
    (tmp_path / "step_4" / PROGRESS_NAME).write_text("{}  ")  # damaged after the save
    logged.clear()
    assert resolve_resume_checkpoint("auto", tmp_path, log=logged.append) == tmp_path / "step_2"
    assert len(logged) == 2 and f"skipping {tmp_path / 'step_4'}" in logged[0]
    assert logged[1] == (f"--resume_from_checkpoint auto: resuming from {tmp_path / 'step_2'}, "
                         f"the newest complete checkpoint in {tmp_path}")  # fmt: skip
    with pytest.raises(ResumeError, match="No valid checkpoint found") as error:
        resolve_resume_checkpoint(True, tmp_path / "empty")  # True: one is required
    assert isinstance(error.value, ValueError)  # as Trainer.train raises it
    assert resolve_resume_checkpoint(None, tmp_path) is None
    assert resolve_resume_checkpoint(False, tmp_path) is None


def test_a_named_checkpoint_that_cannot_be_used_is_refused_with_what_to_pass(
    tmp_path, fresh_accelerate
) -> None:
    accelerator, *_ = _setup()
    save_accelerate_checkpoint(accelerator, tmp_path, 2)  # no progress.json
    save_accelerate_checkpoint(accelerator, tmp_path, 4, progress={"step": 4})
    with pytest.raises(ResumeError, match=r"no progress\.json: not a checkpoint of this script"):
        resolve_resume_checkpoint(tmp_path / "step_2", tmp_path, required=[PROGRESS_NAME])
    with pytest.raises(ResumeError) as error:
        resolve_resume_checkpoint(tmp_path / "step_9", tmp_path, option="--resume")
    assert f"cannot resume from {tmp_path / 'step_9'}" in str(error.value)
    assert f"--resume {tmp_path / 'step_4'}" in str(error.value)  # the previous complete one
    path = resolve_resume_checkpoint(tmp_path / "step_4", tmp_path, required=[PROGRESS_NAME])
    assert path == tmp_path / "step_4"


def test_stop_signals_turn_sigterm_and_sigint_into_a_request_and_restore_the_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)  # the process lives on
        assert stop.requested() and stop.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal: stop now
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested() and stop.received == signal.SIGINT
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
