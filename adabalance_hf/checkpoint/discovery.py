"""Finding checkpoints in a folder, and the latest one that is complete and intact."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .manifest import CheckpointError, verify_checkpoint

__all__ = ["checkpoint_step", "find_checkpoints", "latest_complete_checkpoint"]

logger = logging.getLogger("adabalance_hf")


def checkpoint_step(path: str | os.PathLike, prefix: str) -> int | None:
    """The step in a folder name ``<prefix><step>``, or ``None`` for any other name."""
    match = re.fullmatch(re.escape(prefix) + r"(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def find_checkpoints(root: str | os.PathLike, prefix: str) -> list[Path]:
    """Folders ``<root>/<prefix><step>``, oldest step first; staging folders are not included."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p, prefix) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p, prefix))


def latest_complete_checkpoint(
    root: str | os.PathLike, prefix: str, *, checksums: bool = True, log_skipped: bool = True
) -> tuple[Path | None, list[CheckpointError]]:
    """The newest checkpoint under ``root`` that passes :func:`verify_checkpoint`.

    Each newer one that fails is logged as a warning with its path and reason, and skipped.

    Args:
        root: the folder holding ``<prefix><step>`` checkpoint folders.
        prefix: the folder-name prefix, e.g. ``"step_"`` or ``"checkpoint-"``.
        checksums: verify SHA-256 as well as sizes.
        log_skipped: log a warning for each skipped checkpoint (pass ``False`` when the caller
            reports the returned errors itself).

    Returns:
        ``(path, skipped)``: the checkpoint (``None`` if there is none) and the errors of the
        newer ones that were skipped.
    """
    skipped: list[CheckpointError] = []
    for path in reversed(find_checkpoints(root, prefix)):
        try:
            verify_checkpoint(path, checksums=checksums)
        except CheckpointError as error:
            if log_skipped:
                logger.warning("%s; falling back to an older checkpoint", error)
            skipped.append(error)
            continue
        return path, skipped
    return None, skipped
