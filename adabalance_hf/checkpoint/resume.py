"""Which checkpoint a resume value means: ``auto``, ``True``, or a folder to verify.

One resolver for every caller: accelerate scripts (``--resume_from_checkpoint auto``, folders
``step_N``) and :class:`~adabalance_hf.checkpoint.AtomicCheckpointsMixin`
(``Trainer.train(resume_from_checkpoint=...)``, folders ``checkpoint-N``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .atomic import STAGING_SUFFIX
from .discovery import checkpoint_step, find_checkpoints, latest_complete_checkpoint
from .manifest import MANIFEST_NAME, CheckpointError, verify_checkpoint

__all__ = ["AUTO", "ResumeError", "resolve_resume_checkpoint"]

#: Values that mean "the newest complete checkpoint, or a fresh start" (``latest``: older name).
AUTO = ("auto", "latest")


class ResumeError(CheckpointError, ValueError):
    """The checkpoint to resume from is missing, unfinished or damaged, or there is none.

    The message names the folder, the reason and what to pass instead. It is a
    :class:`~adabalance_hf.checkpoint.CheckpointError` (``path``, ``reason``) and a
    ``ValueError`` (what ``Trainer.train`` raises for ``resume_from_checkpoint=True`` without a
    checkpoint).

    Args:
        path (str or PathLike): the folder that cannot be resumed from.
        reason (str): why.
        message (str): the whole message.
    """

    def __init__(self, path: str | os.PathLike, reason: str, message: str) -> None:
        super().__init__(path, reason)
        self.args = (message,)

    def __reduce__(self) -> tuple[type, tuple[Path, str, str]]:
        # pickled when the main process sends it to the others (AtomicCheckpointsMixin)
        return type(self), (self.path, self.reason, self.args[0])


def _spell(option: str, value: object) -> str:
    """``--flag value`` for a command-line option, ``name='value'`` for a keyword argument."""
    if option.startswith("-"):
        return f"{option} {value}"
    return f"{option}={value if isinstance(value, bool) else str(value)!r}"


def resolve_resume_checkpoint(
    value: str | os.PathLike | bool | None,
    root: str | os.PathLike,
    prefix: str = "step_",
    *,
    required: Iterable[str] = (),
    unverified_marker: str | None = None,
    option: str = "--resume_from_checkpoint",
    log: Callable[[str], object] = print,
) -> Path | None:
    """Return the checkpoint to resume from, or ``None`` to start from scratch.

    * ``None``, ``False`` or ``""``: ``None``.
    * ``auto`` (or ``latest``): the newest complete checkpoint ``<root>/<prefix><step>``,
      logging each newer damaged or unfinished one with its reason; ``None`` (logged) when there
      is none, so a job script can pass it on every run, the first one included.
    * ``True``: the same, but no complete checkpoint is an error (as in ``Trainer.train``).
    * Anything else is a checkpoint folder, which must pass :func:`verify_checkpoint` and hold
      ``required``. With ``unverified_marker``, a folder without a manifest that holds that file
      (e.g. a ``checkpoint-N`` written by a plain ``transformers.Trainer``, which writes
      ``trainer_state.json`` last) is returned as is, with a logged warning.

    Example (accelerate)::

        path = resolve_resume_checkpoint(args.resume_from_checkpoint, out / "checkpoints")
        if path is not None:
            accelerator.load_state(path)

    Args:
        value (str, PathLike, bool or None): ``auto``, ``latest``, ``True``, a checkpoint
            folder, or ``None``/``False``.
        root (str or PathLike): the folder holding the checkpoints, for ``auto`` and ``True``.
        prefix (str, optional): the checkpoint folders' name prefix (``"checkpoint-"`` for the
            Trainer's). Default: ``"step_"``
        required (iterable of str, optional): files a folder given by path must hold besides
            its manifest (e.g. the script's own ``progress.json``). Default: ``()``
        unverified_marker (str, optional): see above. Default: ``None`` (a folder without a
            manifest is refused)
        option (str, optional): the option's name, for the messages: a command-line flag
            (``"--resume"``) or a keyword (``"resume_from_checkpoint"``).
            Default: ``"--resume_from_checkpoint"``
        log (callable, optional): where the choice, the skipped checkpoints, a fresh start and
            an unverified checkpoint are reported (e.g. ``logger.warning``). Default: ``print``

    Returns:
        Path or None: the checkpoint folder; ``None`` to start from scratch.

    Raises:
        ResumeError: a folder given by path is missing, unfinished (a staging folder) or
            damaged, or ``True`` found no complete checkpoint. The message names the folder,
            the reason and the previous complete checkpoint to pass instead, where there is one.
        TypeError: ``value`` is not one of the above.
    """
    if value is None or value is False or value == "":
        return None
    root = Path(root)
    if value is True or (isinstance(value, str) and value in AUTO):
        return _newest(value, root, prefix, unverified_marker, option, log)
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{option}={value!r}: expected a checkpoint folder, True or 'auto'")
    return _explicit(Path(value), root, prefix, required, unverified_marker, option, log)


def _unverified(path: Path, marker: str | None) -> bool:
    """Whether ``path`` has no manifest but ``marker``: written without atomic checkpoints."""
    return bool(marker) and not (path / MANIFEST_NAME).exists() and (path / marker).is_file()


def _skip_reason(error: CheckpointError, marker: str | None) -> str:
    if _unverified(error.path, marker):
        return (
            f"no {MANIFEST_NAME} to verify it against (written without atomic checkpoints); "
            f"to resume from it anyway, pass its path"
        )
    return error.reason


def _newest(
    value: str | bool,
    root: Path,
    prefix: str,
    marker: str | None,
    option: str,
    log: Callable[[str], object],
) -> Path | None:
    spelled = _spell(option, value)
    path, skipped = latest_complete_checkpoint(root, prefix, log_skipped=False)
    for error in skipped:
        log(f"{spelled}: skipping {error.path}: {_skip_reason(error, marker)}")
    if path is not None:
        log(f"{spelled}: resuming from {path}, the newest complete checkpoint in {root}")
        return path
    if value is True:
        reason = "no complete checkpoint"
        # Trainer.train's own message for resume_from_checkpoint=True, then ours.
        raise ResumeError(
            root,
            reason,
            f"No valid checkpoint found in output directory ({root}): {spelled} found no complete "
            f"{prefix}N folder"
            + "".join(f"; skipped {e.path}: {_skip_reason(e, marker)}" for e in skipped)
            + f". Pass {_spell(option, 'auto')} to start from scratch when there is none, "
            f"or the path of a checkpoint",
        )
    log(f"{spelled}: no complete checkpoint in {root}; starting from scratch")
    return None


def _staging_of(path: Path) -> Path | None:
    """The checkpoint whose staging folder ``path`` is (or is nested in), else ``None``."""
    for folder in (path, path.parent):
        name = folder.name
        if name.startswith(".") and name.endswith(STAGING_SUFFIX):
            return folder.parent / name[1 : -len(STAGING_SUFFIX)]
    return None


def _explicit(
    path: Path,
    root: Path,
    prefix: str,
    required: Iterable[str],
    marker: str | None,
    option: str,
    log: Callable[[str], object],
) -> Path:
    staged_for = _staging_of(path)
    try:
        if staged_for is not None:
            raise CheckpointError(path, "it is the staging folder of a save that did not finish")
        if not path.is_dir():
            raise CheckpointError(path, "no such folder")
        if not _unverified(path, marker):
            verify_checkpoint(path)
        for name in required:
            if not (path / name).is_file():
                raise CheckpointError(path, f"no {name}: not a checkpoint of this script")
    except CheckpointError as error:
        instead = _instead(staged_for or path, root, prefix, option)
        raise ResumeError(
            path,
            error.reason,
            f"{option}: cannot resume from {path}: {error.reason}. {instead}",
        ) from None
    if _unverified(path, marker):
        log(
            f"{option}: {path} has no {MANIFEST_NAME} (written without atomic checkpoints): it "
            f"cannot be verified; loading it as is"
        )
    return path


def _instead(path: Path, root: Path, prefix: str, option: str) -> str:
    """What to pass instead of the unusable checkpoint ``path``."""
    auto = _spell(option, "auto")
    # a committed checkpoint damaged afterwards: a copy of it may exist
    restore = f"; or restore {path} from a copy" if (path / MANIFEST_NAME).is_file() else ""
    step = checkpoint_step(path, prefix)
    if step is not None:
        for older in reversed(find_checkpoints(path.parent, prefix)):
            if checkpoint_step(older, prefix) >= step:
                continue
            try:
                verify_checkpoint(older)
            except CheckpointError:
                continue
            return (
                f"Pass the previous complete checkpoint, {_spell(option, older)}, or {auto} to "
                f"take the newest complete one in {root}{restore}"
            )
    return (
        f"Pass {auto}: it takes the newest complete checkpoint in {root}, or starts from scratch "
        f"if there is none{restore}"
    )
