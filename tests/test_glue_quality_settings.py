"""``glue_quality.py`` counts a stored run as done only if it ran with today's AdaBalance settings.

A run is named by what the benchmark passes to a recipe; the recipes' defaults fill in the rest
and change over time (the GPT-2 recipe's ``final_lr`` went from 0.1 to 0.3), so a record made
under older defaults must not stand in for today's run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "recipes"))

import glue_quality  # noqa: E402
from glue_quality import expected_settings, recorded_settings, stale_runs  # noqa: E402

from adabalance_hf import FINE_TUNING_DEFAULTS  # noqa: E402


def _glue_record(final_lr: float, optimizer: str = "adabalance") -> dict:
    return {"task": "sst2", "optimizer": optimizer, "seed": 0, "options": {"learning_rate": 1e-3},
            "learning_rate": 1e-3, **FINE_TUNING_DEFAULTS, "final_lr": final_lr, "epochs": 1,
            "metric": "accuracy", "value": 0.5, "wall_time_s": 1.0}  # fmt: skip


def test_the_settings_a_run_gets_come_from_the_recipes_own_parsing() -> None:
    glue = ["--task_name", "sst2", "--model_name_or_path", "m", "--optimizer", "adabalance"]
    assert expected_settings("glue", "adabalance", glue) == FINE_TUNING_DEFAULTS
    assert (
        expected_settings("glue", "adabalance", [*glue, "--final_lr", "0.05"])["final_lr"] == 0.05
    )
    assert expected_settings("glue", "adamw", glue) == {}  # AdaBalance's settings only

    import gpt2 as gpt2_recipe  # recipes/gpt2.py, the module the settings are read from

    gpt2 = ["--output_dir", "out", "--optim", "adabalancew", "--use_cpu"]
    # the GPT-2 recipe's own defaults over the name's, then --optim_args over both
    recipe_defaults = gpt2_recipe.DEFAULT_OPTIM_ARGS
    assert expected_settings("gpt2", "adabalancew", gpt2) == {**FINE_TUNING_DEFAULTS,
                                                              **recipe_defaults}  # fmt: skip
    chosen = expected_settings("gpt2", "adabalancew", [*gpt2, "--optim_args", "final_lr=0.2"])
    assert chosen == {**FINE_TUNING_DEFAULTS, **recipe_defaults, "final_lr": 0.2}


def test_a_record_under_other_or_unknown_settings_is_stale() -> None:
    gpt2_record = {"task": "gpt2-wikitext2", "optimizer": "adabalancew", "seed": 1, "options": {},
                   "optimizer_settings": {"class": "AdaBalance", "final_lr": 0.1, "gamma": 1e-4,
                                          "beta3": 0.99, "weight_decay": 0.01}}  # fmt: skip
    old_record = {"task": "gpt2-wikitext2", "optimizer": "adabalancew", "seed": 2, "options": {}}
    records = [_glue_record(0.1), gpt2_record, old_record, _glue_record(0.01, "adamw")]
    assert recorded_settings(gpt2_record) == {"final_lr": 0.1, "gamma": 1e-4, "beta3": 0.99}
    today = {"final_lr": 0.3, "gamma": 1e-4, "beta3": 0.99}
    expected = {0: dict(FINE_TUNING_DEFAULTS), 1: today, 2: today, 3: {}}
    stale = stale_runs(records, expected)
    assert len(stale) == 2  # the GLUE run matches; AdamW's settings are not AdaBalance's
    assert (
        "seed 1" in stale[0] and "ran with final_lr=0.1" in stale[0] and "final_lr=0.3" in stale[0]
    )
    assert "seed 2" in stale[1] and "no settings kept" in stale[1]


def _tuned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, str, str]:
    """``glue_quality.py`` run in this process (it stops before any recipe would run): its exit
    code, stdout and stderr as the interpreter would give them (a ``SystemExit`` message goes to
    stderr with exit code 1)."""
    argv = [
        "glue_quality.py",
        "--glue_dir", str(tmp_path), "--tasks", "sst2", "--optimizers", "adabalance",
        "--lr_grid", "1e-3", "--seeds", "0", "--num_train_epochs", "1",
        "--results_dir", str(tmp_path), "--name", "tuned",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    try:
        glue_quality.main()
        code: int | str | None = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    if isinstance(code, str):
        return 1, out, err + code
    return code or 0, out, err


def test_glue_quality_refuses_to_count_a_run_made_under_other_defaults(
    tmp_path, monkeypatch, capsys
) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps([_glue_record(0.01)]))  # as if final_lr's default had been 0.01
    code, _, err = _tuned(tmp_path, monkeypatch, capsys)
    assert code != 0
    assert "sst2 adabalance seed 0" in err and "ran with final_lr=0.01" in err
    assert f"today final_lr={FINE_TUNING_DEFAULTS['final_lr']:g}" in err
    assert "another --name" in err
    assert json.loads(path.read_text()) == [_glue_record(0.01)]  # the record stays

    # the same run under today's settings is done: nothing runs (there is no data to run on)
    path.write_text(json.dumps([_glue_record(FINE_TUNING_DEFAULTS["final_lr"])]))
    code, out, err = _tuned(tmp_path, monkeypatch, capsys)
    assert code == 0, err[-3000:]
    assert "sst2 adabalance seed" not in out
