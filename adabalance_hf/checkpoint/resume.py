"""Which checkpoint a ``--resume_from_checkpoint`` value means: ``auto``, or a folder to verify."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .discovery import checkpoint_step, find_checkpoints, latest_complete_checkpoint
from .manifest import CheckpointError, verify_checkpoint

__all__ = ["AUTO", "ResumeError", "resolve_resume_checkpoint"]

#: Values that mean "the newest complete checkpoint, or a fresh start" (``latest``: older name).
AUTO = ("auto", "latest")


class ResumeError(ValueError):
    """The checkpoint named to resume from is missing, incomplete or damaged.

    The message names the folder, the reason and what to pass instead.
    """


def resolve_resume_checkpoint(
    value: str | os.PathLike,
    root: str | os.PathLike,
    prefix: str = "step_",
    *,
    required: Iterable[str] = (),
    option: str = "--resume_from_checkpoint",
    log: Callable[[str], object] = print,
) -> Path | None:
    """Return the checkpoint to resume from, or ``None`` to start from scratch.

    ``auto`` (or ``latest``) takes the newest complete checkpoint ``<root>/<prefix><step>``,
    logging each newer damaged or unfinished one with its reason, and returns ``None`` (logged)
    when there is none: a job script can pass it on every run, the first one included. Any other
    value is a checkpoint folder, which must pass :func:`verify_checkpoint`.

    Example (accelerate)::

        path = resolve_resume_checkpoint(args.resume_from_checkpoint, out / "checkpoints")
        if path is not None:
            accelerator.load_state(path)

    Args:
        value (str or PathLike): ``auto``, ``latest`` or a checkpoint folder.
        root (str or PathLike): the folder holding the checkpoints, for ``auto``.
        prefix (str, optional): the checkpoint folders' name prefix. Default: ``"step_"``
        required (iterable of str, optional): files a folder given by path must hold besides
            its manifest (e.g. the script's own ``progress.json``). Default: ``()``
        option (str, optional): the option's name, for the messages.
            Default: ``"--resume_from_checkpoint"``
        log (callable, optional): where the skipped checkpoints and a fresh start are reported.
            Default: ``print``

    Returns:
        Path or None: the checkpoint folder; ``None`` when ``auto`` found none.

    Raises:
        ResumeError: a folder given by path is missing, unfinished or damaged; the message
            names the previous complete checkpoint where there is one.
    """
    root = Path(root)
    if str(value) in AUTO:
        path, skipped = latest_complete_checkpoint(root, prefix, log_skipped=False)
        for error in skipped:
            log(f"{option} {value}: skipping {error.path}: {error.reason}")
        if path is None:
            log(f"{option} {value}: no complete checkpoint in {root}; starting from scratch")
        return path
    path = Path(value)
    try:
        verify_checkpoint(path)
        for name in required:
            if not (path / name).is_file():
                raise CheckpointError(path, f"no {name}: not a checkpoint of this script")
    except CheckpointError as error:
        instead = _instead(path, prefix, option)
        raise ResumeError(
            f"{option}: cannot resume from {path}: {error.reason}. {instead}"
        ) from None
    return path


def _instead(path: Path, prefix: str, option: str) -> str:
    """What to pass instead of the damaged checkpoint ``path``."""
    step = checkpoint_step(path, prefix)
    for older in reversed(find_checkpoints(path.parent, prefix)):
        if step is None or checkpoint_step(older, prefix) >= step:
            continue
        try:
            verify_checkpoint(older)
        except CheckpointError:
            continue
        return (
            f"Pass the previous complete checkpoint, {option} {older}, or {option} auto with "
            f"the run's output folder to take the newest complete one"
        )
    return (
        f"Pass {option} auto with the run's output folder: it takes the newest complete "
        f"checkpoint, or starts from scratch if there is none"
    )
