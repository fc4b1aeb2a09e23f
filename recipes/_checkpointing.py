"""Checkpoints for the accelerate recipes: atomic and verified, rotated, and resumed.

A checkpoint is ``accelerator.save_state`` (model, optimizer, registered scheduler, RNG states of
every process) plus ``progress.json`` (optimizer steps done, per-epoch history, logged losses),
in ``<output_dir>/checkpoints/step_<N>``. It is written through :mod:`adabalance_hf.checkpoint`:
into a hidden staging folder first; once every process has written its files, the main process
writes a manifest (every file's size and SHA-256), flushes it to disk and renames the folder into
place. A folder ``step_<N>`` is therefore always complete: a save killed half-way (preemption,
OOM killer, a full disk) leaves only the staging folder, which resume ignores and the next save
deletes. ``--resume_from_checkpoint auto`` takes the newest checkpoint whose files match its
manifest, skipping (and naming) damaged ones, and starts from scratch if there is none.

SIGINT and SIGTERM only set a flag; the training loop checks it after each optimizer step, saves
a checkpoint and stops, so an interrupted run resumes exactly where it stopped. A second signal
stops at once.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import torch

from adabalance_hf.checkpoint import (
    CheckpointError,
    checkpoint_step,
    commit_checkpoint,
    find_checkpoints,
    latest_complete_checkpoint,
    prepare_staging,
    rotate_checkpoints,
    staging_dir,
    verify_checkpoint,
)

__all__ = [
    "AUTO",
    "CheckpointSaveError",
    "InterruptFlag",
    "ResumeError",
    "checkpoint_path",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

PROGRESS = "progress.json"
PREFIX = "step_"
AUTO = ("auto", "latest")  # 'latest' is the older spelling


class ResumeError(RuntimeError):
    """``--resume_from_checkpoint`` names a folder that cannot be resumed from."""


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (e.g. a full disk); the earlier checkpoints are untouched."""


class InterruptFlag:
    """Catches SIGINT/SIGTERM; ``is_set(accelerator)`` agrees across processes."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: give up at once
            self.restore()
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def is_set(self, accelerator) -> bool:
        return _any(accelerator, self.requested)


def _any(accelerator, flag: bool) -> bool:
    """``flag`` or-ed over every process (also a barrier when there are several)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([int(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item())


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return checkpoint_root(output_dir) / f"{PREFIX}{step}"


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    progress: dict,
    *,
    save_total_limit: int | None = None,
    log=print,
) -> Path:
    """Save the full training state at optimizer step ``step`` atomically; returns its folder.

    Every process must call it. Afterwards the checkpoints beyond ``save_total_limit`` (the
    oldest ones; never the newest complete one) and the staging folders of killed saves are
    deleted. If writing fails on any process (``OSError``: disk full, quota, I/O error), every
    process raises :class:`CheckpointSaveError` and the earlier checkpoints are untouched.
    """
    root, final = checkpoint_root(output_dir), checkpoint_path(output_dir, step)
    staging, main = staging_dir(final), accelerator.is_main_process

    def attempt(action) -> None:  # run on this process, then fail together if any process failed
        error = None
        try:
            action()
        except OSError as caught:
            error = caught
        if _any(accelerator, error is not None):
            accelerator.wait_for_everyone()
            raise CheckpointSaveError(_save_failed(final, staging, error)) from error

    attempt(lambda: prepare_staging(final) if main else None)
    attempt(lambda: _write_state(accelerator, staging, step, progress, main))
    attempt(lambda: _commit(root, staging, final, step, progress, save_total_limit, log, main))
    return final


def _write_state(accelerator, staging: Path, step: int, progress: dict, main: bool) -> None:
    accelerator.save_state(str(staging))
    if main:
        (staging / PROGRESS).write_text(json.dumps({**progress, "step": step}, indent=2))


def _commit(root, staging, final, step, progress, save_total_limit, log, main) -> None:
    if not main:
        return
    history = progress.get("history", [])
    commit_checkpoint(staging, final, {"step": step, "epochs_done": len(history)})
    for path in rotate_checkpoints(root, PREFIX, save_total_limit or None, protect=[final]):
        if not path.name.startswith("."):  # staging folders of killed saves go silently
            log(f"deleted checkpoint {path} (--save_total_limit {save_total_limit})")


def _save_failed(final: Path, staging: Path, error: OSError | None) -> str:
    previous, _ = latest_complete_checkpoint(final.parent, PREFIX, checksums=False)
    where = f"this process: {error}" if error is not None else "another process"
    kept = f"the newest complete checkpoint is {previous}" if previous else "there is none yet"
    return (
        f"saving checkpoint {final} failed on {where}. Nothing was lost: earlier checkpoints are "
        f"untouched ({kept}); the partial save in {staging} is deleted by the next save. Free "
        f"disk space, then re-run with --resume_from_checkpoint auto"
    )


def resolve_checkpoint(value: str, output_dir: str | Path, log=print) -> Path | None:
    """The checkpoint to resume from; ``None`` to start from scratch (``auto`` found none).

    ``value`` is ``auto`` (or ``latest``): the newest complete checkpoint in
    ``<output_dir>/checkpoints``, each newer damaged or partial one logged with its reason and
    skipped; or a checkpoint folder, which must be complete (:class:`ResumeError` otherwise,
    naming the folder, the reason and what to pass instead).
    """
    root = checkpoint_root(output_dir)
    if value in AUTO:
        path, skipped = latest_complete_checkpoint(root, PREFIX, log_skipped=False)
        for error in skipped:
            log(f"--resume_from_checkpoint {value}: skipping {error.path}: {error.reason}")
        if path is None:
            log(
                f"--resume_from_checkpoint {value}: no complete checkpoint in {root}; starting "
                f"from scratch"
            )
        return path
    path = Path(value)
    try:
        verify_checkpoint(path)
        if not (path / PROGRESS).is_file():
            raise CheckpointError(path, f"no {PROGRESS}: not a checkpoint of this recipe")
    except CheckpointError as error:
        raise ResumeError(
            f"--resume_from_checkpoint: cannot resume from {path}: {error.reason}. "
            f"{_alternative(path)}"
        ) from None
    return path


def _alternative(path: Path) -> str:
    """What to pass instead of the damaged checkpoint ``path``."""
    step = checkpoint_step(path, PREFIX)
    for older in reversed(find_checkpoints(path.parent, PREFIX)):
        if step is None or checkpoint_step(older, PREFIX) >= step:
            continue
        try:
            verify_checkpoint(older)
        except CheckpointError:
            continue
        return (
            f"Pass the previous complete checkpoint, --resume_from_checkpoint {older}, or "
            f"--resume_from_checkpoint auto with the run's --output_dir to take the newest "
            f"complete one"
        )
    return (
        "Pass --resume_from_checkpoint auto with the run's --output_dir: it takes the newest "
        "complete checkpoint, or starts from scratch if there is none"
    )


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore the state saved by :func:`save_checkpoint`; returns its progress record."""
    accelerator.load_state(str(path))
    return json.loads((path / PROGRESS).read_text())
