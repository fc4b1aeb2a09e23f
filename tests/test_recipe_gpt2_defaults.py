"""recipes/gpt2.py defaults: adabalancew, beta3=0.99, final_lr=0.3 unless the user says otherwise.

The numbers the tests compare against are written here, so a silent change of a recipe default
fails a test. gamma=1e-4 is the Trainer integration's fine-tuning default.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

from test_recipe_gpt2 import write_text_files

from adabalance_hf.integrations.transformers import adabalance_optimizer_kwargs

RECIPE_BETA3, RECIPE_FINAL_LR, RECIPE_GAMMA = 0.99, 0.3, 1e-4
RECIPE_APPLIED = {"beta3": RECIPE_BETA3, "final_lr": RECIPE_FINAL_LR}
PAPER_BETA3, PAPER_GAMMA = 0.999, 1e-3


def _parse(tmp_path, *extra):
    import gpt2

    return gpt2.parse(["--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none", *extra])


def test_no_flags_give_adabalancew_with_the_recipe_beta3_and_gamma(tmp_path):
    _, _, training_args, applied = _parse(tmp_path)
    assert training_args.optim == "adabalancew"
    assert applied == RECIPE_APPLIED
    kwargs = adabalance_optimizer_kwargs(training_args)
    assert kwargs["beta3"] == RECIPE_BETA3
    assert kwargs["final_lr"] == RECIPE_FINAL_LR
    assert kwargs["gamma"] == RECIPE_GAMMA
    assert kwargs["decoupled_weight_decay"] is True


def test_the_l2_variant_gets_the_recipe_beta3_and_gamma_too(tmp_path):
    _, _, training_args, _ = _parse(tmp_path, "--optim", "adabalance")
    kwargs = adabalance_optimizer_kwargs(training_args)
    assert (kwargs["beta3"], kwargs["final_lr"], kwargs["gamma"]) == (
        RECIPE_BETA3,
        RECIPE_FINAL_LR,
        RECIPE_GAMMA,
    )
    assert not kwargs.get("decoupled_weight_decay", False)


@pytest.mark.parametrize(
    ("flags", "final_lr"),
    [
        (("--optim_args", f"beta3={PAPER_BETA3}"), RECIPE_FINAL_LR),
        (("--optim_args", f" beta3 = {PAPER_BETA3} , final_lr=0.1"), 0.1),
        ((f"--optim_args=beta3={PAPER_BETA3}",), RECIPE_FINAL_LR),
    ],
    ids=["optim_args", "spaced", "equals"],
)
def test_an_explicit_value_wins_even_when_it_equals_the_optimizer_default(
    tmp_path, flags, final_lr
):
    # 0.999 and 0.1 are AdaBalance's own defaults: only optim_args tells "given" from "left open"
    _, _, training_args, applied = _parse(tmp_path, *flags)
    assert applied == ({} if final_lr != RECIPE_FINAL_LR else {"final_lr": RECIPE_FINAL_LR})
    kwargs = adabalance_optimizer_kwargs(training_args)
    assert kwargs["beta3"] == PAPER_BETA3
    assert kwargs["final_lr"] == final_lr
    assert kwargs["gamma"] == RECIPE_GAMMA


def test_an_explicit_gamma_wins(tmp_path):
    _, _, training_args, applied = _parse(tmp_path, "--optim_args", f"gamma={PAPER_GAMMA}")
    assert applied == RECIPE_APPLIED
    kwargs = adabalance_optimizer_kwargs(training_args)
    assert (kwargs["gamma"], kwargs["beta3"]) == (PAPER_GAMMA, RECIPE_BETA3)


def test_adamw_gets_no_adabalance_defaults_and_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, training_args, applied = _parse(tmp_path, "--optim", "adamw_torch")
    assert applied == {}
    assert training_args.optim == "adamw_torch" and training_args.optim_args is None


def test_json_config_gets_the_same_defaults_and_overrides(tmp_path):
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "out"), "use_cpu": True}))
    import gpt2

    _, _, training_args, applied = gpt2.parse([str(config)])
    assert training_args.optim == "adabalancew"
    assert applied == RECIPE_APPLIED

    config.write_text(
        json.dumps({"output_dir": str(tmp_path / "out"), "optim_args": f"beta3={PAPER_BETA3}"})
    )
    _, _, training_args, applied = gpt2.parse([str(config)])
    assert adabalance_optimizer_kwargs(training_args)["beta3"] == PAPER_BETA3
    assert applied == {"final_lr": RECIPE_FINAL_LR}


def test_a_run_without_optimizer_flags_trains_with_the_recipe_defaults(tmp_path):
    import gpt2

    text = write_text_files(tmp_path)
    results = gpt2.main([
        "--train_file", str(text / "train.txt"), "--validation_file", str(text / "valid.txt"),
        "--config_overrides", "n_layer=1,n_embd=32,n_head=2,n_positions=64",
        "--train_tokenizer", "--tokenizer_vocab_size", "300", "--block_size", "32",
        "--output_dir", str(tmp_path / "run"), "--per_device_train_batch_size", "8",
        "--max_steps", "3", "--weight_decay", "0.01", "--save_strategy", "no",
        "--report_to", "none", "--seed", "0", "--use_cpu", "--disable_tqdm", "true",
    ])  # fmt: skip
    optimizer = results["optimizer"]
    assert optimizer["class"] == "AdaBalance"
    assert optimizer["beta3"] == RECIPE_BETA3
    assert optimizer["gamma"] == RECIPE_GAMMA
    assert optimizer["decoupled_weight_decay"] is True
    assert optimizer["final_lr"] == RECIPE_FINAL_LR
    assert results["recipe_defaults_applied"] == RECIPE_APPLIED
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["training_arguments"]["optim"] == "adabalancew"


def test_name_defaults_gpt2_settings_keep_the_names_values_through_the_recipe(tmp_path):
    # benchmarks/name_defaults.py measures the Trainer names' defaults with this recipe: the
    # recipe's own final_lr must not leak into those runs
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from name_defaults import GLUE_RECIPE, with_name_defaults

    from adabalance_hf import FINE_TUNING_DEFAULTS

    optim_args = with_name_defaults("adabalancew", GLUE_RECIPE)
    _, _, training_args, applied = _parse(tmp_path, "--optim_args", optim_args)
    assert applied == {}
    assert (
        adabalance_optimizer_kwargs(training_args)["final_lr"] == FINE_TUNING_DEFAULTS["final_lr"]
    )
    assert with_name_defaults("adamw_torch", "") == ""


@pytest.mark.parametrize(
    ("flags", "flag", "fix"),
    [
        (("--learning_rate=-1e-3",), "--learning_rate -0.001", "must lie in [0.0, inf)"),
        (("--adam_beta1", "1.5"), "--adam_beta1 1.5", "must lie in [0.0, 1.0)"),
        (("--optim_args", "beta3=2"), "--optim_args 'beta3=2'", "must lie in [0.0, 1.0)"),
        (("--optim_args", "final_lr=x"), "--optim_args 'final_lr=x'", "is not a finite float"),
    ],
    ids=["learning_rate", "adam_beta1", "beta3", "not_a_float"],
)
def test_a_bad_adabalance_option_is_an_argparse_error(tmp_path, capsys, flags, flag, fix):
    with pytest.raises(SystemExit) as exit_info:
        _parse(tmp_path, *flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: gpt2.py [-h] ") and len(err.splitlines()) == 2
    last = err.splitlines()[-1]
    assert last.startswith(f"gpt2.py: error: {flag}") and fix in last
