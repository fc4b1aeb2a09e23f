"""Bounding the number of checkpoints kept, never deleting the latest complete one."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .atomic import REPLACED_SUFFIX, STAGING_SUFFIX
from .discovery import checkpoint_step, find_checkpoints
from .lock import LOCK_SUFFIX, unused_checkpoint
from .manifest import CheckpointError, verify_checkpoint

__all__ = ["TRAINER_PREFIX", "rotate_checkpoints", "rotate_trainer_checkpoints"]

logger = logging.getLogger("adabalance_hf")

#: Folder-name prefix of ``transformers.Trainer``'s checkpoints: ``checkpoint-<global step>``.
TRAINER_PREFIX = "checkpoint-"


def rotate_checkpoints(
    root: str | os.PathLike,
    prefix: str,
    save_total_limit: int | None,
    *,
    protect: Iterable[str | os.PathLike] = (),
) -> list[Path]:
    """Delete old checkpoints so that at most ``save_total_limit`` complete ones remain.

    Staging folders left by killed saves are always deleted (and the old copy a killed save was
    replacing, once the new one is in place, and stale lock files), but never those of a save
    that a process is running right now (it holds the checkpoint's lock). With a limit, the
    checkpoints older than the ``save_total_limit`` newest complete ones are deleted,
    incomplete or damaged ones included (nothing can resume from those); incomplete ones among
    or newer than the kept ones are left alone (they may be a user's own, or kept for
    inspection). The newest complete checkpoint is never deleted, whatever the limit.
    "Complete" is judged from the manifest by names and sizes (no checksums, so rotation stays
    cheap); resume checks checksums too.

    Args:
        root: the folder holding ``<prefix><step>`` checkpoint folders.
        prefix: the folder-name prefix, e.g. ``"step_"`` or ``"checkpoint-"``.
        save_total_limit: how many complete checkpoints to keep (``None`` or 0: keep all).
        protect: checkpoints never to delete (e.g. the best model's).

    Returns:
        The folders deleted.
    """
    if save_total_limit is not None and (
        isinstance(save_total_limit, bool) or not isinstance(save_total_limit, int)
        or save_total_limit < 0
    ):  # fmt: skip
        raise ValueError(
            f"save_total_limit={save_total_limit!r}: expected a whole number >= 1 (or None/0 to "
            "keep every checkpoint)"
        )
    root = Path(root)
    keep = {Path(p).resolve() for p in protect}
    complete, broken = [], []
    for path in find_checkpoints(root, prefix):
        try:
            verify_checkpoint(path, checksums=False)
            complete.append(path)
        except CheckpointError:
            broken.append(path)
    if complete:
        keep.add(complete[-1].resolve())
    doomed, leftovers = [], []  # leftovers: (hidden path, the checkpoint it belongs to)
    if root.is_dir():
        for path in root.iterdir():
            name = path.name
            if not name.startswith("."):
                continue
            if name.endswith(STAGING_SUFFIX):
                leftovers.append((path, root / name[1 : -len(STAGING_SUFFIX)]))
            # left by a save killed while it replaced a folder of the same step: stale once the
            # new folder is in place (otherwise it is that step's only copy, and kept)
            elif name.endswith(REPLACED_SUFFIX):
                if (root / name[1 : -len(REPLACED_SUFFIX)]).is_dir():
                    leftovers.append((path, root / name[1 : -len(REPLACED_SUFFIX)]))
            elif name.endswith(LOCK_SUFFIX):
                leftovers.append((None, root / name[1 : -len(LOCK_SUFFIX)]))
    if save_total_limit and complete:
        kept = complete[-save_total_limit:]
        oldest_kept = checkpoint_step(kept[0], prefix)
        doomed += complete[: len(complete) - len(kept)]
        doomed += [p for p in broken if checkpoint_step(p, prefix) < oldest_kept]
    deleted = []
    for path, final in leftovers:
        with unused_checkpoint(final) as unused:  # held: a save of `final` is running now
            if unused and path is not None and path.exists():
                shutil.rmtree(path, ignore_errors=True)
                deleted.append(path)
    for path in doomed:
        if path.resolve() in keep:
            continue
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
    return deleted


def _complete(path: Path) -> bool:
    try:
        verify_checkpoint(path, checksums=False)  # as rotate_checkpoints judges it
    except CheckpointError:
        return False
    return True


def rotate_trainer_checkpoints(
    run_dir: str | os.PathLike,
    save_total_limit: int | None,
    best: str | os.PathLike | None,
    prefix: str = TRAINER_PREFIX,
) -> list[Path]:
    """Delete old checkpoints as ``Trainer`` does, with :func:`rotate_checkpoints`' safety.

    Without a limit (``None`` or ``<= 0``) every checkpoint is kept, as in transformers, and
    only the staging folders of killed saves are deleted. With a limit, staging folders and
    checkpoints older than the newest complete one that fail verification (unfinished, damaged,
    or without a manifest, i.e. not written with ``AtomicCheckpointsMixin``) are deleted too, and
    the newest complete checkpoint never is. transformers keeps ``max(save_total_limit, number
    protected)`` checkpoints, the newest and the best protected
    (``transformers.trainer_utils.rotate_checkpoints``), while :func:`rotate_checkpoints` keeps
    the newest ``save_total_limit`` complete ones plus the protected ones. When the best
    checkpoint is not among the newest ones it takes the place of one of them here, so the count
    is transformers'.

    Args:
        run_dir (str or PathLike): the folder holding ``checkpoint-N`` folders.
        save_total_limit (int, optional): ``TrainingArguments.save_total_limit``.
        best (str or PathLike, optional): ``TrainerState.best_model_checkpoint`` (protected).
        prefix (str, optional): the folder-name prefix. Default: ``"checkpoint-"``

    Returns:
        list of Path: the folders deleted.
    """
    if not save_total_limit or save_total_limit < 0:
        # No limit: keep every checkpoint, as transformers does (rotate_checkpoints would also
        # delete unverifiable ones, e.g. written by plain transformers.Trainer); only clear the
        # staging folders of killed saves.
        deleted = [p for p in Path(run_dir).glob(f".{prefix}*{STAGING_SUFFIX}") if p.is_dir()]
        for path in deleted:
            shutil.rmtree(path, ignore_errors=True)
        return deleted
    limit = save_total_limit
    if limit >= 2 and best:
        complete = [p.resolve() for p in find_checkpoints(run_dir, prefix) if _complete(p)]
        if Path(best).resolve() not in complete[-limit:]:
            limit -= 1
    deleted = rotate_checkpoints(run_dir, prefix, limit, protect=[best] if best else [])
    for path in deleted:
        logger.info("deleted %s (save_total_limit=%s)", path, save_total_limit)
    return deleted
