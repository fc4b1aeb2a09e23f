"""Bounding the number of checkpoints kept, never deleting the latest complete one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .atomic import REPLACED_SUFFIX, STAGING_SUFFIX
from .discovery import checkpoint_step, find_checkpoints
from .lock import LOCK_SUFFIX, unused_checkpoint
from .manifest import CheckpointError, verify_checkpoint

__all__ = ["rotate_checkpoints"]


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
