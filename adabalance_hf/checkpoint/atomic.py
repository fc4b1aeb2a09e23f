"""Atomic commit of a checkpoint folder: write into staging, checksum, flush, rename into place.

Each of these functions holds the checkpoint's lock (:mod:`.lock`) while it runs, and
:func:`atomic_checkpoint` from preparing to committing, so a second process writing the same
checkpoint gets a :class:`ConcurrentCheckpointError` instead of deleting this one's files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .lock import ConcurrentCheckpointError, checkpoint_lock
from .manifest import write_manifest

__all__ = ["atomic_checkpoint", "commit_checkpoint", "prepare_staging", "staging_dir"]

STAGING_SUFFIX = ".incomplete"
REPLACED_SUFFIX = ".replaced"


def staging_dir(final: str | os.PathLike) -> Path:
    """Where the checkpoint that will be ``final`` is written: a hidden sibling folder.

    The name depends only on ``final``, so every process of a distributed job agrees on it.
    """
    final = Path(final)
    return final.parent / f".{final.name}{STAGING_SUFFIX}"


def prepare_staging(final: str | os.PathLike) -> Path:
    """Create an empty staging folder for ``final``, deleting one left by a killed save.

    In a multi-process job call it on the main process only, then synchronise before the other
    processes write into it (:func:`~adabalance_hf.checkpoint.collective_checkpoint` does all
    of that).

    Args:
        final (str or PathLike): the checkpoint's final folder.

    Returns:
        Path: the staging folder.

    Raises:
        ConcurrentCheckpointError: if another process is writing the same checkpoint.
    """
    with checkpoint_lock(final):
        return _prepare(Path(final))


def _prepare(final: Path) -> Path:
    staging = staging_dir(final)
    try:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    except (FileNotFoundError, FileExistsError) as error:
        detail = f"its staging folder {staging} changed while it was being re-created ({error})"
        raise ConcurrentCheckpointError(final, detail=detail) from error
    return staging


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_checkpoint(
    staging: str | os.PathLike,
    final: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write the manifest into ``staging``, flush it to disk and rename it to ``final``.

    After this returns, ``final`` is complete and durable. If ``final`` already exists (the same
    step saved twice), the new folder replaces it. In a multi-process job call it on the main
    process only, after every process has finished writing into ``staging``.

    Args:
        staging (str or PathLike): the folder the checkpoint was written into (see
            :func:`staging_dir`).
        final (str or PathLike): the checkpoint's name in the end.
        metadata (dict, optional): JSON-serialisable facts stored in the manifest (e.g. the
            step). Default: ``None``

    Returns:
        Path: ``final``.

    Raises:
        ConcurrentCheckpointError: if another process is writing the same checkpoint, or
            ``staging`` is missing or changes during the commit (deleted by another process).
    """
    staging, final = Path(staging), Path(final)
    with checkpoint_lock(final):
        if not staging.is_dir():
            detail = f"the staging folder {staging} does not exist (any more)"
            raise ConcurrentCheckpointError(final, detail=detail)
        try:
            return _commit(staging, final, metadata)
        except FileNotFoundError as error:
            detail = f"files of the staging folder {staging} vanished during the commit ({error})"
            raise ConcurrentCheckpointError(final, detail=detail) from error


def _commit(staging: Path, final: Path, metadata: dict[str, Any] | None) -> Path:
    write_manifest(staging, metadata)
    for path in staging.rglob("*"):
        _fsync(path)
    _fsync(staging)
    replaced = None
    if final.exists():
        replaced = final.parent / f".{final.name}{REPLACED_SUFFIX}"
        if replaced.exists():
            shutil.rmtree(replaced)
        os.replace(final, replaced)
    os.replace(staging, final)
    _fsync(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced)
    return final


@contextlib.contextmanager
def atomic_checkpoint(
    final: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Iterator[Path]:
    """Single-process convenience: yields an empty staging folder and commits it on success.

    If the body raises, the staging folder is left behind (the next save deletes it) and
    ``final`` is untouched. The checkpoint's lock is held throughout. For several processes
    writing one checkpoint use :func:`~adabalance_hf.checkpoint.collective_checkpoint`.

    Example::

        with atomic_checkpoint(out / "step_100", {"step": 100}) as folder:
            torch.save(state, folder / "state.pt")

    Args:
        final (str or PathLike): the checkpoint's final folder.
        metadata (dict, optional): JSON-serialisable facts stored in the manifest, read at
            commit time. Default: ``None``

    Raises:
        ConcurrentCheckpointError: if another process is writing the same checkpoint.
    """
    with checkpoint_lock(final):
        staging = _prepare(Path(final))
        yield staging
        commit_checkpoint(staging, final, metadata)
