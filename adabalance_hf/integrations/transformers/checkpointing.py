"""Crash-safe Trainer checkpoints: resolving ``resume_from_checkpoint`` and rotating.

:class:`~adabalance_hf.integrations.transformers.AtomicCheckpointsMixin` writes every
``checkpoint-N`` into a staging folder and commits it with
:func:`adabalance_hf.checkpoint.commit_checkpoint` (manifest of sizes and SHA-256, fsync,
rename), so a folder named ``checkpoint-N`` is always complete. This module holds the parts that
do not need the Trainer: which checkpoint a ``resume_from_checkpoint`` value means, and the
rotation that keeps ``save_total_limit`` checkpoints as transformers counts them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ...checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    find_checkpoints,
    latest_complete_checkpoint,
    rotate_checkpoints,
    verify_checkpoint,
)
from ...checkpoint.atomic import STAGING_SUFFIX

__all__ = ["AUTO", "PREFIX", "resolve_resume_checkpoint", "rotate_trainer_checkpoints"]

logger = logging.getLogger("adabalance_hf")

#: ``resume_from_checkpoint="auto"``: the newest complete checkpoint, or a fresh start.
AUTO = "auto"
#: Folder-name prefix of the Trainer's checkpoints: ``checkpoint-<global step>``.
PREFIX = f"{PREFIX_CHECKPOINT_DIR}-"
# The last file ``Trainer._save_checkpoint`` writes: a checkpoint without a manifest (written by
# another Trainer) that has it did finish its save.
_TRAINER_STATE = "trainer_state.json"


def _skipped_text(skipped: list[CheckpointError]) -> str:
    return "".join(f"\n  skipped {error.path}: {error.reason}" for error in skipped)


def _newest(output_dir: str | os.PathLike, value: bool | str) -> str | None:
    path, skipped = latest_complete_checkpoint(output_dir, PREFIX)
    if path is not None:
        logger.warning(
            "resume_from_checkpoint=%r: resuming from %s, the newest complete checkpoint in %s",
            value, path, output_dir,
        )  # fmt: skip
        return str(path)
    hint = (
        "; to resume from one of them anyway, pass its path as resume_from_checkpoint"
        if skipped
        else ""
    )
    if value is True:
        # transformers' own message for resume_from_checkpoint=True, plus what was skipped.
        raise ValueError(
            f"No valid checkpoint found in output directory ({output_dir})"
            f"{_skipped_text(skipped)}{hint}"
        )
    logger.warning(
        "resume_from_checkpoint='auto': no complete checkpoint in %s; starting from scratch%s%s",
        output_dir, _skipped_text(skipped), hint,
    )  # fmt: skip
    return None


def _explicit(value: str) -> str:
    path = Path(value)
    if not path.is_dir():
        raise ValueError(
            f"resume_from_checkpoint={value!r}: no such folder. Pass a {PREFIX}N folder written "
            f"by a previous run, or 'auto' to resume from the newest complete checkpoint in "
            f"output_dir (or start from scratch when there is none)."
        )
    # A folder of a save killed before its commit: .checkpoint-N.incomplete[/checkpoint-N].
    in_staging = any(p.name.endswith(STAGING_SUFFIX) for p in (path, path.parent))
    if not in_staging and not (path / MANIFEST_NAME).is_file():
        if (path / _TRAINER_STATE).is_file():
            # Written without atomic checkpoints (e.g. by transformers.Trainer): nothing to
            # check it against. It finished its save (trainer_state.json is written last).
            logger.warning(
                "resume_from_checkpoint=%s has no %s (not written with AtomicCheckpointsMixin): it "
                "cannot be verified; loading it as is",
                value, MANIFEST_NAME,
            )  # fmt: skip
            return value
    try:
        if in_staging:
            raise CheckpointError(path, "it is the staging folder of a save that did not finish")
        verify_checkpoint(path)
    except CheckpointError as error:
        root = path.parent.parent if path.parent.name.endswith(STAGING_SUFFIX) else path.parent
        fallback, _ = latest_complete_checkpoint(root, PREFIX)
        instead = (
            f"resume from {fallback}, the newest complete checkpoint next to it"
            if fallback is not None
            else f"no complete {PREFIX}N folder is next to it: start from scratch"
        )
        raise CheckpointError(
            path,
            f"{error.reason}. Fix: {instead} (resume_from_checkpoint='auto' picks it for you), "
            f"or restore {path} from a copy",
        ) from None
    return value


def resolve_resume_checkpoint(
    value: bool | str | None, output_dir: str | os.PathLike
) -> str | None:
    """The checkpoint folder a ``Trainer.train(resume_from_checkpoint=value)`` resumes from.

    Args:
        value: ``None``/``False``: start from scratch. ``True``: the newest complete checkpoint
            in ``output_dir``, a ``ValueError`` if there is none (as in transformers).
            ``"auto"``: the same, but with none found, start from scratch (a job script can be
            run again unchanged after a preemption). A path: that folder, verified against its
            manifest; a folder without a manifest but with ``trainer_state.json`` (written by
            plain ``transformers.Trainer``) is loaded with a warning.
        output_dir: where ``True``/``"auto"`` look for ``checkpoint-N`` folders.

    Damaged or unfinished checkpoints are skipped by ``True``/``"auto"`` (each logged as a
    warning with its path and reason, by logger ``adabalance_hf``).

    Returns:
        The folder as a ``str``, or ``None`` to start from scratch.

    Raises:
        CheckpointError: an explicit path that is damaged or unfinished; the message names the
            path, the reason and the checkpoint to use instead.
        ValueError: ``True`` with no complete checkpoint; an explicit path that does not exist.
    """
    if value is None or value is False:
        return None
    if value is True or value == AUTO:
        return _newest(output_dir, value)
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"resume_from_checkpoint={value!r}: expected a checkpoint folder, True or 'auto'"
        )
    return _explicit(os.fspath(value))


def _complete(path: Path) -> bool:
    try:
        verify_checkpoint(path, checksums=False)  # as rotate_checkpoints judges it
    except CheckpointError:
        return False
    return True


def rotate_trainer_checkpoints(
    run_dir: str | os.PathLike, save_total_limit: int | None, best: str | None
) -> list[Path]:
    """Delete old checkpoints as ``Trainer`` does, with :func:`rotate_checkpoints`' safety.

    Without a limit (``None`` or ``<= 0``) every checkpoint is kept, as in transformers, and
    only the staging folders of killed saves are deleted. With a limit, staging folders and
    checkpoints older than the newest complete one that fail verification (unfinished, damaged,
    or without a manifest, i.e. not written with ``AtomicCheckpointsMixin``) are deleted too, and
    the newest complete checkpoint never is. transformers keeps ``max(save_total_limit, number
    protected)`` checkpoints, the newest and the best protected
    (``transformers.trainer_utils.rotate_checkpoints``), while
    :func:`~adabalance_hf.checkpoint.rotate_checkpoints` keeps the newest ``save_total_limit``
    complete ones plus the protected ones. When the best checkpoint is not among the newest
    ones it takes the place of one of them here, so the count is transformers'.

    Args:
        run_dir: the folder holding ``checkpoint-N`` folders.
        save_total_limit: ``TrainingArguments.save_total_limit``.
        best: ``TrainerState.best_model_checkpoint`` (protected), or ``None``.

    Returns:
        The folders deleted.
    """
    if not save_total_limit or save_total_limit < 0:
        # No limit: keep every checkpoint, as transformers does (rotate_checkpoints would also
        # delete unverifiable ones, e.g. written by plain transformers.Trainer); only clear the
        # staging folders of killed saves.
        deleted = [p for p in Path(run_dir).glob(f".{PREFIX}*{STAGING_SUFFIX}") if p.is_dir()]
        for path in deleted:
            shutil.rmtree(path, ignore_errors=True)
        return deleted
    limit = save_total_limit
    if limit >= 2 and best:
        complete = [p.resolve() for p in find_checkpoints(run_dir, PREFIX) if _complete(p)]
        if Path(best).resolve() not in complete[-limit:]:
            limit -= 1
    deleted = rotate_checkpoints(run_dir, PREFIX, limit, protect=[best] if best else [])
    for path in deleted:
        logger.info("deleted %s (save_total_limit=%s)", path, save_total_limit)
    return deleted
