"""recipes/glue.py killed, interrupted or out of disk, then resumed, ends bitwise where an
uninterrupted run ends; its checkpoints are atomic and verified; non-finite steps are skipped;
without matplotlib it says so before training and writes everything but the plot.

The killed runs are subprocesses (``slow``) started through tests/_kill_driver.py, which SIGKILLs
them at the N-th call of a chosen function: between optimizer steps, in the middle of a checkpoint
write, right after a commit, during an evaluation. SIGINT and SIGTERM come from the same faults in
this process (``_kill_driver.install``), after the N-th optimizer step. The resumed run must end
with the same weights, optimizer state (step counts, m, v, s), scheduler, RNG states, logged
losses, metrics and diagnostics as the reference run (run in this process), to the bit. The tiny
BERT keeps dropout (0.1) and the loader shuffles every epoch, so a wrong RNG state or data
position changes the result; the logging interval (3 steps) differs from the checkpoint interval
(4) so that losses logged across a checkpoint are checked too. Every run uses one thread (the same
reduction order everywhere).
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _kill_driver import install
from safetensors.torch import load_file

from adabalance_hf.checkpoint import MANIFEST_NAME, verify_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
sys.path.insert(0, str(RECIPES))

# tests/_kill_driver.py specs
STEP = "adabalance_hf.optim.adabalance:AdaBalance.step"
SAVE = "accelerate.checkpointing:save"  # model, optimizer, scheduler of a save, in this order
COMMIT = "adabalance_hf.checkpoint.atomic:commit_checkpoint"
METRICS = "sklearn.metrics:accuracy_score"  # the end of an evaluation, after its forward passes
NOT_COMPARED = {"config", "wall_time_s", "resumed_from"}


@pytest.fixture(scope="module")
def setup(sentiment_data, tiny_glue_model):
    return {"data": sentiment_data, "model": tiny_glue_model(hidden=32, layers=2, dropout=0.1)}


def _args(setup, out: Path, *extra: str) -> list[str]:
    # 48 examples, 2 per batch, 2 batches per update: 12 updates an epoch, 2 epochs, 24 steps
    return [
        "--task_name", "sst2", "--data_dir", str(setup["data"]),
        "--model_name_or_path", str(setup["model"]), "--output_dir", str(out),
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--per_device_eval_batch_size", "8", "--num_train_epochs", "2", "--max_seq_length", "16",
        "--learning_rate", "1e-3", "--logging_steps", "3", "--checkpointing_steps", "4",
        "--seed", "3", *extra,
    ]  # fmt: skip


def run(
    setup, out: Path, *extra: str, kill: str | None = None, hide: str = ""
) -> subprocess.CompletedProcess:
    """recipes/glue.py in a subprocess (through the kill driver if ``kill`` or ``hide``)."""
    script = [str(RECIPES / "glue.py")]
    if kill or hide:
        script = [str(ROOT / "tests" / "_kill_driver.py"), kill or "", *script]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "KILL_DRIVER_HIDE": hide,  # modules the script cannot import
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, *script, *_args(setup, out, *extra)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    expected = -9 if kill else 0
    assert done.returncode == expected, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def run_here(argv: list[str], monkeypatch=None, fault: str | None = None) -> int:
    """recipes/glue.py in this process, on one thread like the subprocesses; ``fault``: a
    tests/_kill_driver.py spec installed for this run only."""
    import glue
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if fault is None:
            return glue.main(argv)
        with monkeypatch.context() as patch:
            install(fault, patch.setattr)
            return glue.main(argv)
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The uninterrupted run, in this process: the same bits as a subprocess run (the killed
    runs, subprocesses, end bitwise where it ends)."""
    out = tmp_path_factory.mktemp("glue_reference") / "run"
    assert run_here(_args(setup, out)) == 0
    return out


def names(out: Path) -> list[str]:
    """The checkpoint and staging folders (the lock file a killed save leaves is not listed; the
    next save's rotation deletes it)."""
    found = [p.name for p in (out / "checkpoints").iterdir() if not p.name.endswith(".lock")]
    return sorted(found, key=lambda n: (len(n), n))


def _same(a, b, where: str) -> None:
    """``a`` and ``b`` equal to the bit (tensors, arrays, nested containers, floats)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


def _load(path: Path):
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix == ".json":
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in NOT_COMPARED}
    return torch.load(path, weights_only=False, map_location="cpu")


def assert_same_run(out: Path, ref: Path, last: str = "step_24") -> None:
    """Results, final weights and every checkpoint ``out`` kept: bitwise those of ``ref``."""
    _same(_load(out / "results.json"), _load(ref / "results.json"), "results.json")
    _same(_load(out / "model.safetensors"), _load(ref / "model.safetensors"), "final weights")
    kept = [name for name in names(out) if not name.startswith(".")]
    assert last in kept
    for name in set(kept) & set(names(ref)):
        files = sorted(p.name for p in (out / "checkpoints" / name).iterdir())
        assert files == sorted(p.name for p in (ref / "checkpoints" / name).iterdir()), name
        assert {"optimizer.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl"} < set(files)
        for file in files:
            if file != MANIFEST_NAME:  # its metadata and checksums: compared through the files
                path = f"{name}/{file}"
                _same(_load(out / "checkpoints" / path), _load(ref / "checkpoints" / path), path)


def test_reference_run(reference):
    results = json.loads((reference / "results.json").read_text())
    assert [(e["epoch"], e["step"]) for e in results["epochs"]] == [(1, 12), (2, 24)]
    assert [step for step, _ in results["train_loss"]] == list(range(3, 25, 3))
    assert results["nonfinite_steps_skipped"] == 0
    diagnostics = results["adabalance_diagnostics"]
    assert 0 <= diagnostics["lower_bound"] <= diagnostics["upper_bound"]
    assert (reference / "learning_curve.png").stat().st_size > 1000
    assert names(reference) == [f"step_{n}" for n in range(4, 25, 4)]
    for name in names(reference):
        assert verify_checkpoint(reference / "checkpoints" / name)["step"] == int(name[5:])
    state = torch.load(reference / "checkpoints" / "step_24" / "optimizer.bin")["state"]
    assert {float(s["step"]) for s in state.values()} == {24.0}


@pytest.mark.slow
def test_killed_four_times_and_resumed_ends_bitwise_as_the_reference(setup, reference, tmp_path):
    out, auto = tmp_path / "run", ("--resume_from_checkpoint", "auto", "--save_total_limit", "3")
    checkpoints = out / "checkpoints"

    # 1. Between optimizer steps: killed before update 7 (the last checkpoint is step_4).
    done = run(setup, out, *auto, kill=f"{STEP}:7")
    assert f"no complete checkpoint in {checkpoints}; starting from scratch" in done.stdout
    assert names(out) == ["step_4"]

    # 2. During a checkpoint write: step_8's optimizer.bin half written, then killed.
    done = run(setup, out, *auto, kill=f"{SAVE}:2:half")
    assert f"resumed from {checkpoints / 'step_4'} at step 4" in done.stdout
    staging = checkpoints / ".step_8.incomplete"
    assert sorted(p.name for p in staging.iterdir()) == ["model.safetensors", "optimizer.bin"]
    assert names(out) == ["step_4", ".step_8.incomplete"]

    # 3. Right after a commit: step_12 (the end of epoch 1) committed, killed before evaluating.
    done = run(setup, out, *auto, kill=f"{COMMIT}:2:after")
    assert f"resumed from {checkpoints / 'step_4'} at step 4" in done.stdout  # staging ignored
    assert "skipping" not in done.stdout and "epoch 1" not in done.stdout
    assert names(out) == ["step_4", "step_8", "step_12"]  # the next save removed the staging

    # 4. An explicit path; killed during the last evaluation (after its forward passes).
    step_12 = ("--resume_from_checkpoint", str(checkpoints / "step_12"), "--save_total_limit", "3")
    done = run(setup, out, *step_12, kill=f"{METRICS}:2")
    assert "epoch 1 step 12:" in done.stdout  # the pending evaluation of epoch 1, done first
    assert "epoch 2" not in done.stdout
    assert names(out) == ["step_16", "step_20", "step_24"]  # --save_total_limit 3
    assert "deleted checkpoint" in done.stdout and not (out / "results.json").exists()

    # 5. step_24 damaged afterwards: an explicit path is refused, auto falls back to step_20.
    model = checkpoints / "step_24" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    assert run_here([*_args(setup, out), "--resume_from_checkpoint", str(model.parent)]) == 2
    done = run(setup, out, *auto, hide="matplotlib")  # and no matplotlib installed
    damaged = f"skipping {model.parent}: model.safetensors does not match its SHA-256"
    assert damaged in done.stdout
    resumed = f"resumed from {checkpoints / 'step_20'} at step 20"
    assert resumed in done.stdout
    assert names(out) == ["step_16", "step_20", "step_24"]
    assert not list(checkpoints.glob(".*.lock"))  # stale lock files of killed saves: deleted
    assert_same_run(out, reference)
    # without matplotlib: said before training, everything written but the plot
    note = "note: matplotlib is not installed: no learning_curve.png (pip install matplotlib)"
    assert done.stdout.index(note) < done.stdout.index(resumed)
    assert not (out / "learning_curve.png").exists()
    resumed_from = json.loads((out / "results.json").read_text())["resumed_from"]
    assert [Path(p).name for p in resumed_from] == ["step_4", "step_12", "step_20"]


def test_explicit_damaged_checkpoint_names_path_reason_and_fix(setup, reference, tmp_path, capsys):
    out = tmp_path / "run"
    for name in ("step_16", "step_20"):
        (out / "checkpoints" / name).mkdir(parents=True)
        for file in (reference / "checkpoints" / name).iterdir():
            (out / "checkpoints" / name / file.name).write_bytes(file.read_bytes())
    damaged = out / "checkpoints" / "step_20"
    (damaged / "random_states_0.pkl").unlink()
    argv = [*_args(setup, out), "--resume_from_checkpoint", str(damaged)]
    assert run_here(argv) == 2
    message = capsys.readouterr().err
    assert f"cannot resume from {damaged}: random_states_0.pkl is missing" in message
    assert f"--resume_from_checkpoint {out / 'checkpoints' / 'step_16'}" in message
    assert "--resume_from_checkpoint auto" in message
    (out / "checkpoints" / "step_16" / MANIFEST_NAME).unlink()
    assert run_here(argv) == 2
    message = capsys.readouterr().err
    assert "--resume_from_checkpoint auto" in message and "step_16" not in message
    assert run_here([*_args(setup, out), "--resume_from_checkpoint", str(tmp_path)]) == 2
    assert f"{tmp_path}: no {MANIFEST_NAME}" in capsys.readouterr().err


def test_interrupt_then_full_disk_then_resume(setup, reference, tmp_path, monkeypatch, capsys):
    import sklearn.metrics  # noqa: F401  (as if loaded by an earlier run: its import draws from
    # Python's random, so the recipe must import it before seeding, or the RNG states differ)

    out, auto = tmp_path / "run", ("--resume_from_checkpoint", "auto")
    # SIGINT after step 9: a checkpoint is saved there, exit code 130, no final model
    assert run_here(_args(setup, out), monkeypatch, f"{STEP}:9:sigint") == 130
    assert "interrupted at step 9: saved" in capsys.readouterr().out
    assert names(out) == ["step_4", "step_8", "step_9"]
    assert not (out / "results.json").exists()
    verify_checkpoint(out / "checkpoints" / "step_9")

    # the disk fills half-way through step_12's optimizer.bin
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        real_save(obj, f, *args, **kwargs)
        if len(calls) == 1:
            with open(f, "r+b") as file:
                file.truncate(os.path.getsize(f) // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert run_here(_args(setup, out, *auto)) == 1
    message = capsys.readouterr().err
    staging = out / "checkpoints" / ".step_12.incomplete"
    assert Path(calls[0]) == staging / "optimizer.bin"
    assert f"saving checkpoint {out / 'checkpoints' / 'step_12'} failed" in message
    assert "No space left on device" in message
    assert f"the newest complete checkpoint is {out / 'checkpoints' / 'step_9'}" in message
    assert names(out) == ["step_4", "step_8", "step_9"]  # the partial save deleted
    verify_checkpoint(out / "checkpoints" / "step_9")
    monkeypatch.setattr(torch, "save", real_save)

    batches = []  # the premise of these tests: every epoch is shuffled anew
    _hook_model(
        monkeypatch, lambda m, a, k, o: batches.append(k["input_ids"]) if m.training else None
    )
    assert run_here(_args(setup, out, *auto)) == 0
    assert f"resumed from {out / 'checkpoints' / 'step_9'} at step 9" in capsys.readouterr().out
    assert_same_run(out, reference)
    assert len(batches) == 6 + 24  # batches 18-23 of epoch 1, then all 24 of epoch 2
    assert any(not torch.equal(a, b) for a, b in zip(batches[:6], batches[-6:], strict=True))


def test_bf16_autocast_interrupted_resumed_and_rerun(setup, tmp_path, monkeypatch, capsys):
    # the recipe keeps fp32 parameters under --mixed_precision (autocast), so no master weights
    extra = ("--mixed_precision", "bf16", "--max_train_steps", "8")  # ends mid-epoch 1
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert run_here(_args(setup, ref, *extra)) == 0
    assert json.loads((ref / "results.json").read_text())["mixed_precision"] == "bf16"
    # SIGTERM (a preemption notice) after step 6
    assert run_here(_args(setup, out, *extra), monkeypatch, f"{STEP}:6:sigterm") == 130
    assert names(out) == ["step_4", "step_6"]
    assert run_here(_args(setup, out, *extra, "--resume_from_checkpoint", "latest")) == 0
    assert_same_run(out, ref, last="step_8")
    # a finished job's script run again: resumes at the last step, trains nothing, same results
    capsys.readouterr()
    assert run_here(_args(setup, out, *extra, "--resume_from_checkpoint", "auto")) == 0
    assert f"resumed from {out / 'checkpoints' / 'step_8'} at step 8" in capsys.readouterr().out
    assert_same_run(out, ref, last="step_8")


def _hook_model(monkeypatch, hook, submodule: str = "") -> None:
    """``hook(module, args, kwargs, output)`` runs after each forward pass of (a part of) the
    recipe's model."""
    from transformers import AutoModelForSequenceClassification

    real = AutoModelForSequenceClassification.from_pretrained

    def from_pretrained(*args, **kwargs):
        model = real(*args, **kwargs)
        model.get_submodule(submodule).register_forward_hook(hook, with_kwargs=True)
        return model

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", from_pretrained)


def _poison_training_forward(monkeypatch, call: int) -> None:
    """The ``call``-th training forward pass of the model gets infinite logits (nan loss)."""
    calls = []

    def poison(module, args, kwargs, output):
        calls.append(module.training)
        if sum(calls) == call and module.training:
            return output * math.inf  # the loss is computed from these logits

    _hook_model(monkeypatch, poison, "classifier")


def test_skip_nonfinite_grads(setup, tmp_path, monkeypatch, capsys):
    extra = ("--max_train_steps", "6")  # 2 forward passes per step: the 5th is step 3's
    out = tmp_path / "skip"
    _poison_training_forward(monkeypatch, 5)
    argv = _args(setup, out, *extra, "--skip_nonfinite_grads")
    assert run_here(argv, monkeypatch, f"{STEP}:5:sigint") == 130
    state = torch.load(out / "checkpoints" / "step_4" / "optimizer.bin")
    assert {float(s["step"]) for s in state["state"].values()} == {3.0}  # 4 steps, 1 skipped
    assert {g["nonfinite_steps_skipped"] for g in state["param_groups"]} == {1}
    assert run_here([*argv, "--resume_from_checkpoint", "auto"]) == 0  # the count is restored
    results = json.loads((out / "results.json").read_text())
    assert results["nonfinite_steps_skipped"] == 1
    assert "1 optimizer step(s) skipped for non-finite gradients" in capsys.readouterr().out
    assert all(t.isfinite().all() for t in _load(out / "model.safetensors").values())

    _poison_training_forward(monkeypatch, 5)
    plain = tmp_path / "plain"
    assert run_here(_args(setup, plain, *extra)) == 0
    assert not all(t.isfinite().all() for t in _load(plain / "model.safetensors").values())
    assert json.loads((plain / "results.json").read_text())["nonfinite_steps_skipped"] == 0


def test_argument_checks(capsys):
    import glue

    base = ["--task_name", "rte", "--model_name_or_path", "x"]
    with pytest.raises(SystemExit):
        glue.parse_args([*base, "--optimizer", "adamw", "--skip_nonfinite_grads"])
    assert "--skip_nonfinite_grads is an AdaBalance option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        glue.parse_args([*base, "--save_total_limit", "-1"])
    assert "--save_total_limit: expected N >= 1" in capsys.readouterr().err
    # AdaBalance's options: the optimizer's own range checks, named by the recipe's flag
    bad = {
        ("--learning_rate=-1e-3",): "--learning_rate -0.001: must lie in [0.0, inf)",
        ("--final_lr", "-1"): "--final_lr -1.0: must lie in [0.0, inf)",
        ("--beta3", "1"): "--beta3 1.0: must lie in [0.0, 1.0)",
        ("--gamma", "nan"): "--gamma nan: must lie in [0.0, 1.0)",
        ("--optimizer", "adabalancew_8bit", "--weight_decay", "-1"): "--weight_decay -1.0: must",
    }
    for flags, message in bad.items():
        with pytest.raises(SystemExit) as exit_info:
            glue.parse_args([*base, *flags])
        assert exit_info.value.code == 2
        assert f"glue.py: error: {message}" in capsys.readouterr().err
    # AdamW takes no AdaBalance option: only AdaBalance's are checked
    assert glue.parse_args([*base, "--optimizer", "adamw", "--beta3", "2"]).beta3 == 2
