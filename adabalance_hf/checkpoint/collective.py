"""One atomic checkpoint written by several processes into a shared folder.

Only the main process prepares the staging folder, writes the manifest and renames it; every
process writes its own files in between, separated by barriers. A process whose writing fails
leaves a note in the staging folder before the barrier, so that no process commits: barriers are
anonymous, and without the note a failed process that went on to any later barrier would let the
main process commit a checkpoint that lacks its files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import atomic
from .lock import checkpoint_lock

__all__ = ["CollectiveCheckpointError", "collective_checkpoint"]

FAILED_PREFIX = ".adabalance_failed."


class CollectiveCheckpointError(RuntimeError):
    """Another process failed while writing a collective checkpoint, so none was committed.

    Args:
        path (str or PathLike): the checkpoint.
        failures (list of str): what each failed process reported.
    """

    def __init__(self, path: str | os.PathLike, failures: list[str]) -> None:
        self.path = Path(path)
        self.failures = failures
        super().__init__(
            f"checkpoint {self.path} was not committed: {len(failures)} process(es) failed while "
            f"writing it ({'; '.join(failures)}). Its staging folder was deleted; earlier "
            f"checkpoints are untouched"
        )


def _report(staging: Path, error: BaseException) -> bool:
    """Leave a note of ``error`` for the other processes; ``False`` if it cannot be written."""
    who = f"pid {os.getpid()} on {socket.gethostname()}"
    try:
        note = staging / f"{FAILED_PREFIX}{socket.gethostname()}.{os.getpid()}"
        note.write_text(f"{who}: {type(error).__name__}: {error}")
    except OSError:
        return False
    return True


def _failures(staging: Path) -> list[str]:
    if not staging.is_dir():
        return []
    return sorted(p.read_text() for p in staging.iterdir() if p.name.startswith(FAILED_PREFIX))


@contextlib.contextmanager
def collective_checkpoint(
    final: str | os.PathLike,
    *,
    is_main_process: bool,
    wait_for_everyone: Callable[[], object],
    metadata: dict[str, Any] | None = None,
    nested: bool = False,
) -> Iterator[Path]:
    """Every process writes its files into the yielded folder; the main one commits it.

    Every process of the job enters it with the same ``final``. The main process takes the
    checkpoint's lock and prepares the staging folder; all wait; the body runs on every process;
    all wait; the main process writes the manifest, flushes and renames the folder to ``final``
    (:func:`commit_checkpoint`); all wait again, so that ``final`` is complete on every process
    once the block is left. The other processes never delete, manifest or rename anything.

    If the body raises on any process, no process commits: the failed one re-raises its error,
    the others raise :class:`CollectiveCheckpointError` with it, the main process deletes the
    staging folder, and earlier checkpoints are untouched. A process that dies before the commit
    (SIGKILL, OOM) makes the others fail at the next barrier, and leaves no ``final`` either. The
    main process's own errors before or after the body (another process holding the lock, a
    full disk during the commit) are raised on it at once; the others fail at their pending
    barrier when it exits, as with any failed collective.

    Example (accelerate)::

        with collective_checkpoint(out / "step_100", is_main_process=accelerator.is_main_process,
                                   wait_for_everyone=accelerator.wait_for_everyone) as folder:
            accelerator.save_state(folder)

    Args:
        final (str or PathLike): the checkpoint's final folder, the same on every process.
        is_main_process (bool): whether this process commits (exactly one process of the job).
        wait_for_everyone (callable): a barrier over every process of the job
            (``accelerator.wait_for_everyone``, ``torch.distributed.barrier``, ...).
        metadata (dict, optional): JSON-serialisable facts stored in the manifest; used on the
            main process, and read at commit time, so the body may still fill it in.
            Default: ``None``
        nested (bool, optional): the body writes the checkpoint into ``<folder>/<final.name>``
            (for writers that append the checkpoint's name to the folder they are given, like
            ``Trainer._save_checkpoint`` with a redirected run folder); that subfolder is
            committed. Default: ``False``

    Yields:
        Path: the staging folder (:func:`staging_dir`), empty on entry.

    Raises:
        ConcurrentCheckpointError: on the main process, if another process is writing the same
            checkpoint (a misconfigured launch): nothing of its checkpoint is changed.
        CollectiveCheckpointError: on the processes whose body succeeded, if another one's
            failed.
    """
    final = Path(final)
    staging = atomic.staging_dir(final)
    with contextlib.ExitStack() as stack:
        if is_main_process:
            stack.enter_context(checkpoint_lock(final))
            atomic.prepare_staging(final)
        wait_for_everyone()
        try:
            yield staging
        except GeneratorExit:
            raise
        except BaseException as error:
            if not _report(staging, error):
                raise  # the others cannot be told: they fail at the barrier once this one exits
            wait_for_everyone()  # every process has written its part, or its note
            wait_for_everyone()  # every process has read the notes
            if is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        wait_for_everyone()
        failures = _failures(staging)
        if failures:
            wait_for_everyone()
            if is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
            raise CollectiveCheckpointError(final, failures)
        if is_main_process:
            # through the module, so that tests can intercept atomic.commit_checkpoint
            atomic.commit_checkpoint(staging / final.name if nested else staging, final, metadata)
            if nested:
                shutil.rmtree(staging, ignore_errors=True)  # empty now
        wait_for_everyone()
