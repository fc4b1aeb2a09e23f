"""Crash-safe checkpoint folders: atomic commit, a manifest of checksums, and discovery.

A checkpoint is written into a staging folder next to its final place and renamed into place
only once every file is written, checksummed in a manifest and flushed to disk. A folder with the
final name is therefore always complete; a save killed half-way leaves only a staging folder,
which resume ignores and the next save or rotation deletes. At resume time the manifest is
checked (sizes and SHA-256), so a checkpoint damaged afterwards (truncated, bit rot, a file
deleted by hand) is reported with its path and the previous complete one is used instead.

Several processes write one checkpoint with :func:`collective_checkpoint` (only the main one
prepares, manifests and renames). A lock file per checkpoint makes a second process that writes
the same checkpoint at the same time (a misconfigured launch) fail with
:class:`ConcurrentCheckpointError` instead of deleting the first one's files.

For accelerate scripts: :func:`save_accelerate_checkpoint` / :func:`load_accelerate_checkpoint`
(``accelerator.save_state`` committed atomically, with rotation), :func:`resolve_resume_checkpoint`
(``--resume_from_checkpoint auto`` or a verified folder) and :class:`StopSignals` (save and stop
on SIGINT/SIGTERM). For a ``transformers.Trainer``: :class:`AtomicCheckpointsMixin`
(``class MyTrainer(AtomicCheckpointsMixin, Trainer)``), loaded on first use so that this package
imports without transformers.
"""

from .._lazy import lazy_attributes
from .accelerate_checkpoint import (
    PROGRESS_NAME,
    CheckpointSaveError,
    StopSignals,
    load_accelerate_checkpoint,
    save_accelerate_checkpoint,
)
from .atomic import atomic_checkpoint, commit_checkpoint, prepare_staging, staging_dir
from .collective import CollectiveCheckpointError, collective_checkpoint
from .discovery import checkpoint_step, find_checkpoints, latest_complete_checkpoint
from .lock import ConcurrentCheckpointError, checkpoint_lock, lock_path
from .manifest import MANIFEST_NAME, CheckpointError, verify_checkpoint, write_manifest
from .resume import AUTO, ResumeError, resolve_resume_checkpoint
from .rotation import TRAINER_PREFIX, rotate_checkpoints, rotate_trainer_checkpoints

# public name -> the submodule that defines it, imported on first use (it imports transformers).
_LAZY = {"AtomicCheckpointsMixin": ".trainer"}

__all__ = [
    "AUTO",
    "MANIFEST_NAME",
    "PROGRESS_NAME",
    "TRAINER_PREFIX",
    "AtomicCheckpointsMixin",
    "CheckpointError",
    "CheckpointSaveError",
    "CollectiveCheckpointError",
    "ConcurrentCheckpointError",
    "ResumeError",
    "StopSignals",
    "atomic_checkpoint",
    "checkpoint_lock",
    "checkpoint_step",
    "collective_checkpoint",
    "commit_checkpoint",
    "find_checkpoints",
    "latest_complete_checkpoint",
    "load_accelerate_checkpoint",
    "lock_path",
    "prepare_staging",
    "resolve_resume_checkpoint",
    "rotate_checkpoints",
    "rotate_trainer_checkpoints",
    "save_accelerate_checkpoint",
    "staging_dir",
    "verify_checkpoint",
    "write_manifest",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
