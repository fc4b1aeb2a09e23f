"""recipes/gpt2.py killed with SIGKILL and resumed ends bitwise where an uninterrupted run ends.

Each run is a subprocess started through tests/_kill_driver.py, which SIGKILLs it at the N-th
call of a chosen function: between optimizer steps, inside a checkpoint save before its commit,
right after a commit. The resumed run must give the same weights, optimizer state (step counts,
m, v, s), scheduler and RNG states, log history and evaluation as the reference run, to the bit.
The tiny GPT-2 keeps dropout (0.1) and the Trainer shuffles the training set every epoch, so a
wrong RNG state or data position would change the result. Every run keeps save_total_limit=1
and is started with ``--resume_from_checkpoint auto``, as a job script re-run after a
preemption would be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_recipe_gpt2 import write_text_files

from adabalance_hf.checkpoint import verify_checkpoint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # 2-3 subprocess runs of the recipe per test
STEPS = 12  # 40 blocks of 32 tokens, batch 8: 5 steps an epoch; saves at 4, 8, 12
# Kill points (tests/_kill_driver.py specs).
STEP = "adabalance_hf.optim.adabalance:AdaBalance.step"
MANIFEST = "adabalance_hf.checkpoint.atomic:write_manifest"
COMMIT = "adabalance_hf.checkpoint.atomic:commit_checkpoint"


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    return write_text_files(tmp_path_factory.mktemp("gpt2_text"))


def run(text_files, out: Path, *, kill: str | None = None, resume: str = "auto"):
    args = [
        "--train_file", str(text_files / "train.txt"),
        "--validation_file", str(text_files / "valid.txt"),
        "--config_overrides",
        "n_layer=1,n_embd=32,n_head=2,n_positions=64,resid_pdrop=0.1,embd_pdrop=0.1,"
        "attn_pdrop=0.1",
        "--train_tokenizer", "--tokenizer_vocab_size", "300", "--block_size", "32",
        "--max_train_blocks", "40", "--max_eval_blocks", "8",
        "--output_dir", str(out), "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--max_steps", str(STEPS),
        "--learning_rate", "3e-3", "--warmup_steps", "2", "--optim", "adabalancew",
        "--optim_args", "final_lr=0.05,beta3=0.99,gamma=0.01",
        "--logging_steps", "2", "--save_steps", "4", "--save_total_limit", "1",
        "--resume_from_checkpoint", resume,
        "--report_to", "none", "--seed", "0", "--use_cpu", "--disable_tqdm", "true",
    ]  # fmt: skip
    script = [str(ROOT / "recipes" / "gpt2.py")]
    if kill:
        script = [str(ROOT / "tests" / "_kill_driver.py"), kill, *script]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",  # same thread count in every run; frugal on shared CI cores
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, *script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    if kill:
        assert done.returncode == -9, done.stderr[-3000:]
    else:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def on_disk(out: Path) -> tuple[list[str], list[str]]:
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    return [n for n in names if n.startswith("checkpoint-")], [n for n in names if n[0] == "."]


@pytest.fixture(scope="module")
def reference(text_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run(text_files, out)
    assert "starting from scratch" in done.stderr
    return out


def assert_same_tensors(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        if isinstance(a[key], dict):
            assert_same_tensors(a[key], b[key], f"{where}/{key}")
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{where}/{key}"
        else:
            assert a[key] == b[key], f"{where}/{key}"


def training_logs(results: dict) -> list[dict]:
    return [entry for entry in results["log_history"] if "loss" in entry]


def assert_same_run(reference: Path, resumed: Path, resumed_from: int, stdout: str) -> None:
    # save_total_limit=1: exactly the newest complete checkpoint, and no staging folder
    assert on_disk(resumed) == ([f"checkpoint-{STEPS}"], [])
    assert on_disk(reference) == ([f"checkpoint-{STEPS}"], [])
    final_a, final_b = reference / f"checkpoint-{STEPS}", resumed / f"checkpoint-{STEPS}"
    verify_checkpoint(final_b)
    # weights, the final model and the checkpoint's
    for name in ("model.safetensors", f"checkpoint-{STEPS}/model.safetensors"):
        assert_same_tensors(load_file(reference / name), load_file(resumed / name), name)
    # optimizer state: step counts, exp_avg (m), exp_avg_sq (v), exp_avg_lr (s); scheduler; RNG
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        a = torch.load(final_a / name, weights_only=False)
        b = torch.load(final_b / name, weights_only=False)
        if name == "rng_state.pth":  # ("MT19937", keys, pos, has_gauss, cached)
            assert np.array_equal(a["numpy"][1], b["numpy"][1])
            a["numpy"], b["numpy"] = a["numpy"][2:], b["numpy"][2:]
        assert_same_tensors(a, b, name)
    state = torch.load(final_b / "optimizer.pt", weights_only=False)["state"]
    assert {"exp_avg", "exp_avg_sq", "exp_avg_lr"} <= state[0].keys()
    assert float(state[0]["step"]) == STEPS
    # metrics: evaluation, perplexity, every logged loss, grad norm, lr, diagnostics
    results_a = json.loads((reference / "results.json").read_text())
    results_b = json.loads((resumed / "results.json").read_text())
    assert results_b["eval_metrics"]["eval_loss"] == results_a["eval_metrics"]["eval_loss"]
    assert results_b["validation_perplexity"] == results_a["validation_perplexity"]
    logs_a, logs_b = training_logs(results_a), training_logs(results_b)
    assert [e["step"] for e in logs_b] == list(range(2, STEPS + 1, 2))
    assert any(e["step"] > resumed_from for e in logs_b)
    assert logs_b == logs_a
    # it really resumed: the resumed process itself logged only the steps after the checkpoint
    printed = [line for line in stdout.splitlines() if line.startswith("{'loss'")]
    assert len(printed) == (STEPS - resumed_from) // 2


def test_killed_between_optimizer_steps_resumes_from_an_explicit_path(
    text_files, reference, tmp_path
):
    out = tmp_path / "run"
    run(text_files, out, kill=f"{STEP}:7")  # steps 1-6 done, checkpoint-4 saved
    assert on_disk(out) == (["checkpoint-4"], [])
    done = run(text_files, out, resume=str(out / "checkpoint-4"))
    assert "resuming from" not in done.stderr  # an explicit path is used as given
    assert_same_run(reference, out, 4, done.stdout)


def test_killed_inside_a_save_before_its_commit_resumes_auto_from_the_previous(
    text_files, reference, tmp_path
):
    out = tmp_path / "run"
    run(text_files, out, kill=f"{MANIFEST}:2")  # every file of checkpoint-8 written, no manifest
    assert on_disk(out) == (["checkpoint-4"], [".checkpoint-8.incomplete"])
    staged = out / ".checkpoint-8.incomplete" / "checkpoint-8"
    assert (staged / "optimizer.pt").is_file() and (staged / "trainer_state.json").is_file()
    done = run(text_files, out)
    assert f"resuming from {out / 'checkpoint-4'}" in done.stderr
    assert_same_run(reference, out, 4, done.stdout)  # and the staging folder is gone


def test_killed_after_a_commit_and_a_corrupted_newest_checkpoint(text_files, reference, tmp_path):
    out = tmp_path / "run"
    run(text_files, out, kill=f"{COMMIT}:2:after")  # checkpoint-8 committed, not yet rotated
    assert on_disk(out) == (["checkpoint-4", "checkpoint-8"], [".checkpoint-8.incomplete"])
    verify_checkpoint(out / "checkpoint-8")
    corrupted = out.parent / "corrupted"
    shutil.copytree(out, corrupted)

    done = run(text_files, out)
    assert f"resuming from {out / 'checkpoint-8'}" in done.stderr
    assert_same_run(reference, out, 8, done.stdout)

    # the newest checkpoint damaged after its commit: auto says so and takes the previous one
    optimizer = corrupted / "checkpoint-8" / "optimizer.pt"
    size = optimizer.stat().st_size
    with optimizer.open("r+b") as f:
        f.truncate(size // 2)
    done = run(text_files, corrupted)
    assert (
        f"skipping {corrupted / 'checkpoint-8'}: optimizer.pt has {size // 2} "
        f"bytes, the manifest says {size}"
    ) in done.stderr
    assert f"resuming from {corrupted / 'checkpoint-4'}" in done.stderr
    assert_same_run(reference, corrupted, 4, done.stdout)
