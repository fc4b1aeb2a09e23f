"""recipes/gpt2.py end to end: a tiny GPT-2 from a config, a tokenizer trained on the text."""

from __future__ import annotations

import json
import math
import os
import random
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))


def _text(count: int, seed: int) -> str:
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the old man", "my sister", "the river"]
    verbs = ["sees", "likes", "follows", "paints", "crosses"]
    objects = ["the hill", "a red boat", "the bridge", "an apple", "the garden"]
    return "\n".join(
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} ." for _ in range(count)
    )


def write_text_files(root: Path) -> Path:
    """``train.txt`` (400 sentences) and ``valid.txt`` (80) in ``root``; returns ``root``."""
    (root / "train.txt").write_text(_text(400, 0))
    (root / "valid.txt").write_text(_text(80, 1))
    return root


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    return write_text_files(tmp_path_factory.mktemp("gpt2"))


def _args(text_files, out, *extra):
    return [
        "--train_file", str(text_files / "train.txt"),
        "--validation_file", str(text_files / "valid.txt"),
        "--config_overrides", "n_layer=1,n_embd=32,n_head=2,n_positions=64",
        "--train_tokenizer", "--tokenizer_vocab_size", "300", "--block_size", "32",
        "--output_dir", str(out), "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--max_steps", "16", "--learning_rate", "3e-3",
        "--optim", "adabalancew", "--optim_args", "final_lr=0.05,beta3=0.99,gamma=0.01",
        "--logging_steps", "4", "--save_steps", "8",
        "--report_to", "none", "--seed", "0", "--use_cpu", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def test_gpt2_from_config_with_trained_tokenizer_and_adabalance_options(text_files, tmp_path):
    import gpt2

    results = gpt2.main(_args(text_files, tmp_path / "run"))
    optimizer = results["optimizer"]
    assert optimizer["class"] == "AdaBalance"
    # --optim_args, the typed field and the name's variant all reached the optimizer
    assert (optimizer["final_lr"], optimizer["beta3"], optimizer["gamma"]) == (0.05, 0.99, 0.01)
    assert optimizer["decoupled_weight_decay"] is True
    perplexity = results["validation_perplexity"]
    assert math.isfinite(perplexity)
    assert perplexity == pytest.approx(math.exp(results["eval_metrics"]["eval_loss"]))
    assert any("adabalance/lower_bound" in entry for entry in results["log_history"])
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["validation_perplexity"] == pytest.approx(perplexity)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run")
    assert model.config.n_layer == 1 and model.config.vocab_size == len(tokenizer) <= 300
    # 16 steps must beat the uniform guess (perplexity = vocabulary size) clearly
    assert perplexity < 0.75 * len(tokenizer)

    # atomic checkpoints: each verifies against its manifest, no staging folder is left
    from adabalance_hf.checkpoint import verify_checkpoint

    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == [
        "checkpoint-16", "checkpoint-8"
    ]  # fmt: skip
    for step in (8, 16):
        assert verify_checkpoint(tmp_path / "run" / f"checkpoint-{step}")["global_step"] == step

    # resuming from the step-8 checkpoint ends exactly where the uninterrupted run ended
    resumed = gpt2.main(
        _args(text_files, tmp_path / "run", "--resume_from_checkpoint",
              str(tmp_path / "run" / "checkpoint-8"))
    )  # fmt: skip
    assert resumed["eval_metrics"]["eval_loss"] == results["eval_metrics"]["eval_loss"]


def test_gpt2_missing_files_name_the_argument(tmp_path, capsys):
    import gpt2

    with pytest.raises(SystemExit) as exit_info:
        gpt2.main(["--train_file", str(tmp_path / "nope.txt"), "--validation_file", "x",
                   "--output_dir", str(tmp_path), "--report_to", "none"])  # fmt: skip
    assert exit_info.value.code == 2
    assert f"gpt2.py: error: --train_file {tmp_path / 'nope.txt'}: no such file" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        gpt2.main(["--output_dir", str(tmp_path), "--optim", "adabalancex"])
    assert "gpt2.py: error: argument --optim: invalid choice: 'adabalancex'" in (
        capsys.readouterr().err
    )
