"""TRL's own ``trl sft`` command line, unmodified, trains with AdaBalance through adabalance-run.

``trl sft`` parses ``--optim`` in its own process, then re-launches TRL's ``sft.py`` through
``accelerate launch`` in a child: both must have the names. A tiny local Llama and a local JSON
dataset stand in for the Hub.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _trl_fixtures import sft_dataset, tiny_llama, tokenizer
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ARGS = ["--max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size", "4"]
ARGS += ["--report_to", "none", "--use_cpu", "--max_length", "32", "--seed", "0"]
ARGS += ["--disable_tqdm", "true", "--optim", "adabalancew"]
ARGS += ["--optim_args", "final_lr=0.2,gamma=1e-3"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trl_cli")
    tiny_llama().save_pretrained(root / "model")
    tokenizer().save_pretrained(root / "model")
    (root / "data").mkdir()
    sft_dataset(32).to_json(str(root / "data" / "train.jsonl"))
    return root


def _trl_sft(workdir: Path, output_dir: str, *extra: str) -> None:
    # This interpreter's `trl` (a venv's, in CI's floor environment) first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    trl = shutil.which("trl", path=path)
    assert trl is not None, "TRL's console script is not installed"
    command = [sys.executable, "-m", "adabalance_hf.run", "trl", "sft"]
    command += ["--model_name_or_path", "model", "--dataset_name", "data"]
    command += ["--output_dir", output_dir, *ARGS, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": path}
    done = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]


def test_trl_sft_trains_saves_adabalance_state_and_resumes_bitwise(workdir):
    _trl_sft(workdir, "full")
    state = torch.load(workdir / "full" / "checkpoint-2" / "optimizer.pt", weights_only=False)
    group = state["param_groups"][0]
    assert (group["final_lr"], group["gamma"], group["beta3"]) == (0.2, 1e-3, 0.9)
    assert group["decoupled_weight_decay"] is True
    first = next(iter(state["state"].values()))
    assert {"exp_avg", "exp_avg_sq", "exp_avg_lr"} <= set(first)  # AdaBalance's own state
    assert int(first["step"]) == 2

    _trl_sft(workdir, "resumed", "--resume_from_checkpoint", "full/checkpoint-2")
    full = load_file(workdir / "full" / "model.safetensors")
    resumed = load_file(workdir / "resumed" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for name, tensor in full.items():
        assert torch.equal(tensor, resumed[name]), name
    start = load_file(workdir / "model" / "model.safetensors")
    assert any(not torch.equal(start[name], full[name]) for name in start)  # it did train
