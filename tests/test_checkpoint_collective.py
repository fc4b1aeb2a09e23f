"""Several processes writing one atomic checkpoint, and a second process writing the same one.

collective_checkpoint runs in 2 real processes (gloo on 127.0.0.1) that share one folder. The
independent second writer (what a misconfigured launch starts) is a subprocess that holds a
checkpoint open until the test tells it, over its stdin, to commit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.distributed as dist
from _dist_helpers import needs_gloo, run_workers

from adabalance_hf.checkpoint import (
    MANIFEST_NAME,
    ConcurrentCheckpointError,
    atomic_checkpoint,
    collective_checkpoint,
    commit_checkpoint,
    lock_path,
    prepare_staging,
    rotate_checkpoints,
    staging_dir,
    verify_checkpoint,
)

NAME = "checkpoint-2"


def _write_part(rank: int, folder: Path) -> None:
    (folder / f"rank{rank}.bin").write_bytes(bytes([rank + 1]) * 1000)
    (folder / "rng").mkdir(exist_ok=True)
    (folder / "rng" / f"state_{rank}.json").write_text(f'{{"rank": {rank}}}')


def _record(calls: list, owner: object, name: str) -> None:
    original = getattr(owner, name)

    def recorded(*args, **kwargs):
        calls.append((name, *map(str, args)))
        return original(*args, **kwargs)

    setattr(owner, name, recorded)


def _save_worker(rank: int, world: int, root: str, nested: bool) -> list:
    from adabalance_hf.checkpoint import atomic

    calls: list = []
    for owner, name in ((atomic, "prepare_staging"), (atomic, "write_manifest"),
                        (os, "replace"), (os, "rename"), (shutil, "rmtree")):  # fmt: skip
        _record(calls, owner, name)
    metadata = {"step": 2}
    with collective_checkpoint(
        Path(root) / NAME,
        is_main_process=rank == 0,
        wait_for_everyone=dist.barrier,
        metadata=metadata,
        nested=nested,
    ) as folder:
        part = folder / NAME if nested else folder
        part.mkdir(exist_ok=True)
        _write_part(rank, part)
        metadata["epochs"] = 1  # read at commit time
    return calls


@pytest.mark.slow
@needs_gloo
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_two_processes_write_one_checkpoint_committed_by_the_main_one(tmp_path, nested) -> None:
    calls = run_workers(_save_worker, str(tmp_path), nested)
    final = tmp_path / NAME
    assert verify_checkpoint(final) == {"step": 2, "epochs": 1}
    files = sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file())
    assert files == [MANIFEST_NAME, "rank0.bin", "rank1.bin", "rng/state_0.json",
                     "rng/state_1.json"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]  # no staging, no lock left
    assert calls[1] == []  # rank 1 never prepares, manifests, renames or deletes
    names = [call[0] for call in calls[0]]
    assert names.count("prepare_staging") == 1 and names.count("write_manifest") == 1
    staged = staging_dir(final) / NAME if nested else staging_dir(final)
    assert ("replace", str(staged), str(final)) in calls[0]


def _failing_worker(rank: int, world: int, root: str) -> dict:
    try:
        with collective_checkpoint(
            Path(root) / NAME, is_main_process=rank == 0, wait_for_everyone=dist.barrier
        ) as folder:
            _write_part(rank, folder)
            if rank == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
    except Exception as error:
        return {"type": type(error).__name__, "message": str(error), "pid": os.getpid()}
    return {"type": None}


@pytest.mark.slow
@needs_gloo
def test_a_failure_on_one_process_commits_nothing_and_every_process_raises(tmp_path) -> None:
    previous = _save(tmp_path, "checkpoint-1")
    main, other = run_workers(_failing_worker, str(tmp_path))  # and they still share barriers
    assert (other["type"], other["message"]) == ("OSError", "[Errno 28] No space left on device")
    assert main["type"] == "CollectiveCheckpointError"
    assert f"checkpoint {tmp_path / NAME} was not committed" in main["message"]
    assert f"pid {other['pid']} on " in main["message"]  # names the process that failed
    assert "OSError: [Errno 28] No space left on device" in main["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # staging deleted
    verify_checkpoint(previous)


def _dying_worker(rank: int, world: int, root: str) -> None:
    with collective_checkpoint(
        Path(root) / NAME, is_main_process=rank == 0, wait_for_everyone=dist.barrier
    ) as folder:
        _write_part(rank, folder)
        if rank == 1:
            os._exit(1)  # killed before the commit


@pytest.mark.slow
@needs_gloo
def test_a_process_that_dies_before_the_commit_leaves_no_checkpoint(tmp_path) -> None:
    previous = _save(tmp_path, "checkpoint-1")
    with pytest.raises(AssertionError) as failed:
        run_workers(_dying_worker, str(tmp_path))
    report = str(failed.value)
    assert "rank 1: no result (exit code 1)" in report
    assert "collective.py" in report  # rank 0 failed in the helper's barrier, before committing
    assert not (tmp_path / NAME).exists()
    rotate_checkpoints(tmp_path, "checkpoint-", None)  # the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    verify_checkpoint(previous)


# --- a second, independent process saving the same checkpoint -------------------------------

HOLDER = """
import sys
from pathlib import Path
from adabalance_hf.checkpoint import collective_checkpoint

with collective_checkpoint(Path(sys.argv[1]), is_main_process=True,
                           wait_for_everyone=lambda: None, metadata={"by": "holder"}) as folder:
    (folder / "model.bin").write_bytes(b"holder" * 100)
    print("holding", flush=True)
    sys.stdin.readline()
print("committed", flush=True)
"""


def _save(root: Path, name: str = NAME, payload: bytes = b"mine") -> Path:
    with atomic_checkpoint(root / name, {"by": "test"}) as folder:
        (folder / "model.bin").write_bytes(payload * 100)
    return root / name


@contextlib.contextmanager
def _holder(final: Path) -> Iterator[subprocess.Popen]:
    """A process in the middle of writing ``final``; it commits when the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(final)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "holding"
        yield process
    finally:
        if process.poll() is None:
            out, _ = process.communicate("\n", timeout=60)
            assert process.returncode == 0 and out.strip() == "committed"


def test_a_second_writer_of_the_same_checkpoint_fails_clearly_and_changes_nothing(
    tmp_path,
) -> None:
    final = tmp_path / NAME
    with _holder(final) as holder:
        attempts = [
            lambda: prepare_staging(final),
            lambda: commit_checkpoint(staging_dir(final), final),
            lambda: _save(tmp_path),
            lambda: collective_checkpoint(
                final, is_main_process=True, wait_for_everyone=lambda: None
            ).__enter__(),
        ]
        for attempt in attempts:
            with pytest.raises(ConcurrentCheckpointError) as error:
                attempt()
            assert f"another process (pid {holder.pid} on " in str(error.value)
            assert "misconfigured launch" in str(error.value)
        rotate_checkpoints(tmp_path, "checkpoint-", 1)  # leaves a running save alone
        assert (staging_dir(final) / "model.bin").read_bytes() == b"holder" * 100
        assert not final.exists()
    assert verify_checkpoint(final) == {"by": "holder"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]  # its lock file is gone
    _save(tmp_path)  # one after the other: the same step saved again replaces it
    assert verify_checkpoint(final) == {"by": "test"}


def test_a_killed_writer_does_not_block_the_next_save(tmp_path) -> None:
    final = tmp_path / NAME
    with _holder(final) as holder:
        holder.kill()
        holder.wait()
    assert lock_path(final).is_file() and staging_dir(final).is_dir()  # stale, unlocked
    rotate_checkpoints(tmp_path, "checkpoint-", None)
    assert list(tmp_path.iterdir()) == []  # the stale lock file and staging folder are gone
    with _holder(final) as holder:
        holder.kill()
        holder.wait()
    _save(tmp_path)  # takes over the stale lock
    assert verify_checkpoint(final) == {"by": "test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_a_staging_folder_deleted_under_a_commit_is_a_clear_error(tmp_path) -> None:
    # what another process's prepare_staging did to this one's files in the misconfigured
    # launch (it crashed with FileNotFoundError inside the manifest code)
    final = tmp_path / NAME
    staging = prepare_staging(final)
    (staging / "model.bin").write_bytes(b"x")
    shutil.rmtree(staging)
    with pytest.raises(ConcurrentCheckpointError, match="does not exist"):
        commit_checkpoint(staging, final)
    assert not final.exists()
