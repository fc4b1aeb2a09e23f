"""Crash-safe checkpoint folders: atomic commit, manifest verification, discovery, rotation."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import textwrap

import pytest

from adabalance_hf.checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    atomic_checkpoint,
    find_checkpoints,
    latest_complete_checkpoint,
    rotate_checkpoints,
    staging_dir,
    verify_checkpoint,
)


def _save(root, step, payload=b"weights"):
    with atomic_checkpoint(root / f"step_{step}", {"step": step}) as folder:
        (folder / "model.bin").write_bytes(payload * 100)
        (folder / "sub").mkdir()
        (folder / "sub" / "rng.json").write_text(f'{{"step": {step}}}')
    return root / f"step_{step}"


def test_commit_writes_manifest_and_verifies(tmp_path):
    path = _save(tmp_path, 3)
    assert verify_checkpoint(path) == {"step": 3}
    assert (path / MANIFEST_NAME).is_file()
    assert not staging_dir(path).exists()


def test_a_failed_save_leaves_no_checkpoint_and_the_next_save_cleans_up(tmp_path):
    with pytest.raises(OSError), atomic_checkpoint(tmp_path / "step_1") as folder:
        (folder / "model.bin").write_bytes(b"half")
        raise OSError("No space left on device")
    assert not (tmp_path / "step_1").exists()
    assert staging_dir(tmp_path / "step_1").exists()
    _save(tmp_path, 1)
    assert not staging_dir(tmp_path / "step_1").exists()
    verify_checkpoint(tmp_path / "step_1")


def test_sigkill_during_write_keeps_the_previous_checkpoint(tmp_path):
    _save(tmp_path, 1)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from adabalance_hf.checkpoint import atomic_checkpoint
        with atomic_checkpoint(Path({str(tmp_path)!r}) / "step_2") as folder:
            (folder / "model.bin").write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert done.returncode == -9
    assert [p.name for p in find_checkpoints(tmp_path, "step_")] == ["step_1"]
    path, skipped = latest_complete_checkpoint(tmp_path, "step_")
    assert path == tmp_path / "step_1" and skipped == []


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "model.bin").write_bytes(b"x" * 700), "does not match its SHA-256"),
        (lambda p: (p / "model.bin").write_bytes(b"short"), "has 5 bytes"),
        (lambda p: (p / "sub" / "rng.json").unlink(), "sub/rng.json is missing"),
        (lambda p: (p / MANIFEST_NAME).unlink(), "did not finish"),
        (lambda p: (p / MANIFEST_NAME).write_text("{"), "unreadable"),
    ],
)
def test_damaged_checkpoint_is_reported_and_the_previous_one_used(tmp_path, caplog, damage, reason):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    damage(newest)
    with pytest.raises(CheckpointError, match=reason) as error:
        verify_checkpoint(newest)
    assert error.value.path == newest and str(newest) in str(error.value)
    with caplog.at_level(logging.WARNING, logger="adabalance_hf"):
        path, skipped = latest_complete_checkpoint(tmp_path, "step_")
    assert path == tmp_path / "step_1"
    assert [e.path for e in skipped] == [newest]
    assert str(newest) in caplog.text and reason.split()[0] in caplog.text


def test_no_complete_checkpoint(tmp_path):
    assert latest_complete_checkpoint(tmp_path / "missing", "step_") == (None, [])
    (tmp_path / "step_4").mkdir()
    path, skipped = latest_complete_checkpoint(tmp_path, "step_")
    assert path is None and [e.path.name for e in skipped] == ["step_4"]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    _save(tmp_path, 5, b"old")
    _save(tmp_path, 5, b"new")
    assert (tmp_path / "step_5" / "model.bin").read_bytes() == b"new" * 100
    verify_checkpoint(tmp_path / "step_5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_5"]


def test_rotation_keeps_the_newest_complete(tmp_path):
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step)
    staging_dir(tmp_path / "step_6").mkdir()  # left by a killed save
    deleted = rotate_checkpoints(tmp_path, "step_", 2)
    assert sorted(p.name for p in deleted) == [".step_6.incomplete", "step_1", "step_2", "step_3"]
    assert [p.name for p in find_checkpoints(tmp_path, "step_")] == ["step_4", "step_5"]


def test_rotation_never_deletes_the_last_complete_checkpoint(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    (tmp_path / "step_3" / "model.bin").write_bytes(b"truncated")  # newest is damaged
    (tmp_path / "step_2" / MANIFEST_NAME).unlink()
    rotate_checkpoints(tmp_path, "step_", 1)
    # step_1 is the newest complete one; step_2/step_3 are newer than it and left for inspection
    assert [p.name for p in find_checkpoints(tmp_path, "step_")] == ["step_1", "step_2", "step_3"]
    _save(tmp_path, 4)
    rotate_checkpoints(tmp_path, "step_", 1)
    assert [p.name for p in find_checkpoints(tmp_path, "step_")] == ["step_4"]


def test_rotation_without_limit_only_removes_staging_folders(tmp_path):
    for step in (1, 2):
        _save(tmp_path, step)
    (tmp_path / "step_1" / MANIFEST_NAME).unlink()  # e.g. written by another tool
    staging_dir(tmp_path / "step_3").mkdir()
    assert [p.name for p in rotate_checkpoints(tmp_path, "step_", None)] == [".step_3.incomplete"]
    assert [p.name for p in find_checkpoints(tmp_path, "step_")] == ["step_1", "step_2"]


def test_rotation_removes_a_stale_replaced_copy_only_when_the_new_one_exists(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / "step_1").rename(tmp_path / ".step_1.replaced")  # killed mid-replace of step_1
    shutil.copytree(tmp_path / "step_2", tmp_path / ".step_2.replaced")  # ... of step_2
    deleted = rotate_checkpoints(tmp_path, "step_", None)
    assert [p.name for p in deleted] == [".step_2.replaced"]
    assert (tmp_path / ".step_1.replaced").is_dir()


def test_damaged_checkpoints_can_be_left_unlogged(tmp_path, caplog):
    _save(tmp_path, 1)
    (_save(tmp_path, 2) / MANIFEST_NAME).unlink()
    with caplog.at_level(logging.WARNING, logger="adabalance_hf"):
        path, skipped = latest_complete_checkpoint(tmp_path, "step_", log_skipped=False)
    assert path.name == "step_1" and len(skipped) == 1 and caplog.text == ""


def test_rotation_protects_and_keeps_all(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    rotate_checkpoints(tmp_path, "step_", 1, protect=[tmp_path / "step_1"])
    assert [p.name for p in find_checkpoints(tmp_path, "step_")] == ["step_1", "step_3"]
    assert rotate_checkpoints(tmp_path, "step_", None) == []


@pytest.mark.parametrize("limit", [-1, 1.5, "2", True])
def test_rotation_rejects_bad_limit(tmp_path, limit):
    with pytest.raises(ValueError, match="save_total_limit"):
        rotate_checkpoints(tmp_path, "step_", limit)
