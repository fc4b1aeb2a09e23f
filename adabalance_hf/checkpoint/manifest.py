"""The manifest of a checkpoint folder: every file's size and SHA-256, and its verification."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_NAME", "CheckpointError", "verify_checkpoint", "write_manifest"]

MANIFEST_NAME = "adabalance_manifest.json"
_FORMAT = "adabalance-hf-checkpoint/1"
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete or corrupted; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path} is unusable: {reason}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_manifest(folder: str | os.PathLike, metadata: dict[str, Any] | None = None) -> dict:
    """Checksum every file under ``folder`` and write the manifest into it.

    Args:
        folder: the checkpoint folder (normally the staging folder, before it is committed).
        metadata: JSON-serialisable facts to keep with the checksums (e.g. the step).

    Returns:
        The manifest that was written.
    """
    folder = Path(folder)
    manifest = {
        "format": _FORMAT,
        "metadata": metadata or {},
        "files": {
            p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in _files(folder)
        },
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of ``folder``; :class:`CheckpointError` if it is missing or unreadable."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(folder, f"no {MANIFEST_NAME} (the save did not finish)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(folder, f"{MANIFEST_NAME} is unreadable ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise CheckpointError(folder, f"{MANIFEST_NAME} is not an {_FORMAT} manifest")
    return manifest


def verify_checkpoint(folder: str | os.PathLike, *, checksums: bool = True) -> dict:
    """Check that every file the manifest lists is present, of its size and (optionally) checksum.

    Args:
        folder: the checkpoint folder.
        checksums: also compare SHA-256 (reads every byte); ``False`` checks names and sizes only.

    Returns:
        The manifest's ``metadata``.

    Raises:
        CheckpointError: naming the folder and the first problem found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "not a folder")
    manifest = read_manifest(folder)
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(folder, f"{name} is missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(
                folder, f"{name} has {size} bytes, the manifest says {expected['size']}"
            )
        if checksums and _sha256(path) != expected["sha256"]:
            raise CheckpointError(folder, f"{name} does not match its SHA-256 (corrupted)")
    return manifest["metadata"]
