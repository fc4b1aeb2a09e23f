"""Atomic ``accelerator.save_state`` checkpoints, and saving on SIGINT/SIGTERM.

:func:`save_accelerate_checkpoint` writes ``accelerator.save_state`` (model, optimizer, the
objects registered for checkpointing, every process's RNG states) and an optional JSON record of
the script's own progress into a staging folder, commits it with a manifest
(:func:`collective_checkpoint`) and rotates old checkpoints; :func:`load_accelerate_checkpoint`
restores it. :class:`StopSignals` turns SIGINT/SIGTERM into a flag that a training loop checks
after each optimizer step, to save a checkpoint and stop there.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from .collective import CollectiveCheckpointError, collective_checkpoint
from .discovery import latest_complete_checkpoint
from .rotation import rotate_checkpoints

__all__ = [
    "PROGRESS_NAME",
    "CheckpointSaveError",
    "StopSignals",
    "load_accelerate_checkpoint",
    "save_accelerate_checkpoint",
]

#: The file holding the ``progress`` record of :func:`save_accelerate_checkpoint`.
PROGRESS_NAME = "progress.json"


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (e.g. a full disk); nothing was committed.

    The message names the checkpoint, the error, the newest complete checkpoint and the fix.
    """


def _any_process(accelerator: Any, flag: bool) -> bool:
    """``flag`` or-ed over every process (a collective when there are several)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([int(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item())


def save_accelerate_checkpoint(
    accelerator: Any,
    root: str | os.PathLike,
    step: int,
    *,
    progress: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    prefix: str = "step_",
    save_total_limit: int | None = None,
    log: Callable[[str], object] = print,
) -> Path:
    """Save the whole training state as the checkpoint ``<root>/<prefix><step>``, atomically.

    Every process calls it. The folder appears only once complete (a save killed half-way
    leaves a hidden staging folder, which resume ignores and the next save deletes); its
    manifest holds every file's size and SHA-256, ``{"step": step, **metadata}``. Afterwards the
    checkpoints beyond the newest ``save_total_limit`` are deleted (never the newest complete
    one), each logged.

    Example::

        accelerator.register_for_checkpointing(lr_scheduler)
        save_accelerate_checkpoint(accelerator, out / "checkpoints", step, progress={"step": step})

    Args:
        accelerator (accelerate.Accelerator): the run's accelerator.
        root (str or PathLike): the folder of the checkpoints.
        step (int): the optimizer steps done, part of the folder's name.
        progress (dict, optional): JSON-serialisable state of the script (epoch, logged
            losses, ...), written by the main process as ``progress.json``. Default: ``None``
        metadata (dict, optional): more facts for the manifest. Default: ``None``
        prefix (str, optional): the folder-name prefix. Default: ``"step_"``
        save_total_limit (int, optional): how many checkpoints to keep (``None``/0: all).
            Default: ``None``
        log (callable, optional): where deleted checkpoints are reported. Default: ``print``

    Returns:
        Path: the checkpoint folder.

    Raises:
        CheckpointSaveError: on every process, if writing failed on any (``OSError``: disk
            full, quota, I/O error); the staging folder is deleted, earlier checkpoints are
            untouched.
    """
    root = Path(root)
    final = root / f"{prefix}{step}"
    main = accelerator.is_main_process
    error: BaseException | None = None
    try:
        with collective_checkpoint(
            final, is_main_process=main, wait_for_everyone=accelerator.wait_for_everyone,
            metadata={"step": step, **(metadata or {})},
        ) as staging:  # fmt: skip
            accelerator.save_state(str(staging))
            if main and progress is not None:
                (staging / PROGRESS_NAME).write_text(json.dumps(progress, indent=2))
    except (OSError, CollectiveCheckpointError) as caught:
        error = caught
    if error is not None:
        previous, _ = latest_complete_checkpoint(root, prefix, checksums=False)
        kept = f"the newest complete checkpoint is {previous}" if previous else "there is none yet"
        raise CheckpointSaveError(
            f"saving checkpoint {final} failed ({error}). Nothing was lost: earlier checkpoints "
            f"are untouched ({kept}). Free disk space, then re-run with --resume_from_checkpoint "
            f"auto"
        ) from error
    if main:
        for path in rotate_checkpoints(root, prefix, save_total_limit or None, protect=[final]):
            if not path.name.startswith("."):  # staging folders of killed saves go silently
                log(f"deleted checkpoint {path} (save_total_limit {save_total_limit})")
    return final


def load_accelerate_checkpoint(accelerator: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Restore a checkpoint of :func:`save_accelerate_checkpoint`; return its ``progress``.

    Args:
        accelerator (accelerate.Accelerator): the run's accelerator, prepared as when saving.
        path (str or PathLike): the checkpoint folder (e.g. from
            :func:`resolve_resume_checkpoint`).

    Returns:
        dict: the ``progress`` record saved with it (``{}`` if there was none).
    """
    path = Path(path)
    accelerator.load_state(str(path))
    record = path / PROGRESS_NAME
    return json.loads(record.read_text()) if record.is_file() else {}


class StopSignals:
    """While active (a ``with`` block), SIGINT and SIGTERM only ask the training loop to stop.

    The loop calls :meth:`requested` after each optimizer step, and on ``True`` saves a
    checkpoint and stops, so a preempted (SIGTERM) or interrupted (Ctrl-C) run resumes exactly
    where it stopped. A second signal raises ``KeyboardInterrupt`` at once. The previous
    handlers are restored when the block is left.

    Example::

        with StopSignals() as stop:
            for batch in loader:
                ...
                if stop.requested(accelerator):
                    save_accelerate_checkpoint(accelerator, root, step)
                    break
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            self.__exit__()
            raise KeyboardInterrupt
        self.received = signum

    def requested(self, accelerator: Any = None) -> bool:
        """Whether a signal arrived, on any process of ``accelerator`` (on this one if ``None``).

        Every process must call it at the same point: with several, it is a collective.
        """
        flag = self.received is not None
        return flag if accelerator is None else _any_process(accelerator, flag)
