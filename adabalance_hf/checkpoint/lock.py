"""One writer per checkpoint: a lock file held from preparing the staging folder to the rename.

Two processes that both act as the main process of a run and save the same step into one folder
(a misconfigured launch that started independent single-process runs, or two jobs sharing an
output folder) share one staging folder, since its name depends only on the checkpoint's: each
deletes the other's files, and one of them crashes with ``FileNotFoundError`` in the middle of
a save, or commits the other's half-written files. The writer of ``<dir>/<name>`` therefore holds
an exclusive ``flock`` on ``<dir>/.<name>.lock``, and a second writer fails at once with
:class:`ConcurrentCheckpointError` rather than waiting its turn: waiting would let it replace the
first process's complete checkpoint of that step with its own afterwards, silently, so that two
runs would keep interleaving their checkpoints in one folder (and a resume would mix them); the
error keeps the first checkpoint intact and stops the duplicate run with the reason.

The kernel drops a ``flock`` when its process dies, so a killed save never blocks the next one;
the lock file is deleted when the lock is released (a stale one by :func:`rotate_checkpoints`).
On file systems without locks (or without ``fcntl``) saves go on unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["LOCK_SUFFIX", "ConcurrentCheckpointError", "checkpoint_lock", "lock_path"]

LOCK_SUFFIX = ".lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_held: set[str] = set()  # the lock files this process holds (the lock is reentrant in it)


class ConcurrentCheckpointError(RuntimeError):
    """Another process writes the same checkpoint at the same time; nothing of it was changed.

    Args:
        path (str or PathLike): the checkpoint.
        holder (str, optional): the other process (``"pid N on HOST"``), when known.
        detail (str, optional): what was found, when the other process is not known.
    """

    def __init__(
        self, path: str | os.PathLike, holder: str | None = None, detail: str = ""
    ) -> None:
        self.path = Path(path)
        self.holder = holder
        if holder is not None:
            found = f"another process ({holder}) is writing it at this moment"
        else:
            found = f"{detail}, so another process is writing it at the same time"
        super().__init__(
            f"cannot write checkpoint {self.path}: {found}. Two processes that each act as the "
            f"main process are saving into one output folder: usually a misconfigured launch "
            f"that started independent single-process runs (each a world of 1; see "
            f"adabalance_hf.distributed.check_trainer_launch and check_launch), or two jobs "
            f"given the same output folder. This process changed nothing of the other one's "
            f"checkpoint. Fix the launch, or give each run its own output folder"
        )


def lock_path(final: str | os.PathLike) -> Path:
    """The lock file of checkpoint ``final``: the hidden sibling ``.<name>.lock``.

    Args:
        final (str or PathLike): the checkpoint's final folder.

    Returns:
        Path: the lock file (it exists only while a process holds it).
    """
    final = Path(final)
    return final.parent / f".{final.name}{LOCK_SUFFIX}"


class _Busy(Exception):
    def __init__(self, holder: str) -> None:
        self.holder = holder


def _acquire(path: Path) -> int | None:
    """The locked descriptor of ``path``; ``None`` where the file system cannot lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
            os.close(fd)
            raise _Busy(holder or "a process that has not written its name yet") from None
        except OSError as error:
            os.close(fd)
            if error.errno in _NO_LOCKS:
                return None
            raise
        # A holder deletes the file before it unlocks: if this descriptor's file is no longer
        # the one at `path`, another process may already hold a new one there.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            return fd
        os.close(fd)


def _release(path: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def checkpoint_lock(final: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of checkpoint ``final`` for the body; reentrant within one process.

    Args:
        final (str or PathLike): the checkpoint's final folder (its parent is created).

    Raises:
        ConcurrentCheckpointError: if another process holds it (naming that process).
    """
    path = lock_path(final)
    key = os.path.abspath(path)
    if fcntl is None or key in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(path)
    except _Busy as busy:
        raise ConcurrentCheckpointError(final, busy.holder) from None
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        _release(path, fd)


@contextlib.contextmanager
def unused_checkpoint(final: str | os.PathLike) -> Iterator[bool]:
    """For clean-up: yields whether no process (this one included) is writing ``final``.

    While the body runs with ``True``, the lock is held, so no writer can start; on exit the
    lock file is gone (a stale one included).
    """
    path = lock_path(final)
    key = os.path.abspath(path)
    if fcntl is None:
        yield True
        return
    if key in _held or not path.parent.is_dir():
        yield key not in _held
        return
    try:
        fd = _acquire(path)
    except _Busy:
        yield False
        return
    try:
        yield True
    finally:
        _release(path, fd)
