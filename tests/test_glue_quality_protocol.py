"""The tuned comparison's protocol (benchmarks/_lr_grid.py) and ``glue_quality.py --lr_grid``.

The protocol is checked on made-up records (which rate wins, what is left to run), imported from
``glue_quality.py`` and ``plot_quality.py``, the scripts that run and plot it; the script once end
to end on the tiny GLUE data, stopped and continued (``slow``: it runs the recipes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import glue_quality  # noqa: E402
from glue_quality import TunedProtocol, find_run  # noqa: E402


def _record(task, optimizer, seed, rate, value, options=None, epochs=3):
    return {"task": task, "optimizer": optimizer, "seed": seed, "learning_rate": rate,
            "options": {"learning_rate": rate} if options is None else options,
            "value": value, "metric": "f1", "epochs": epochs}  # fmt: skip


PROTOCOL = TunedProtocol(
    optimizers={"mrpc": ["adabalance", "adamw"], "gpt2-wikitext2": ["adabalancew"]},
    grids={"mrpc": [3e-5, 1e-4, 3e-4], "gpt2-wikitext2": [1e-3, 3e-3]},
    seeds={"mrpc": [1, 2], "gpt2-wikitext2": [1]},
    epochs={"mrpc": 3, "gpt2-wikitext2": None},
)


def test_the_grid_runs_first_then_the_seeds_at_the_best_rate() -> None:
    assert PROTOCOL.plan([])[:3] == [("mrpc", "adabalance", 0, {"learning_rate": r})
                                     for r in (3e-5, 1e-4, 3e-4)]  # fmt: skip
    records = [_record("mrpc", "adabalance", 0, r, v)
               for r, v in ((3e-5, 0.80), (1e-4, 0.86), (3e-4, 0.84))]  # fmt: skip
    assert PROTOCOL.best_rate(records, "mrpc", "adabalance") == 1e-4  # the highest F1
    plan = PROTOCOL.plan(records)
    assert plan[:2] == [("mrpc", "adabalance", 1, {"learning_rate": 1e-4}),
                        ("mrpc", "adabalance", 2, {"learning_rate": 1e-4})]  # fmt: skip
    assert PROTOCOL.best_rate(records, "mrpc", "adamw") is None  # its grid has not run
    assert sum(1 for run in plan if run[1] == "adamw") == 3


def test_perplexity_picks_the_lowest() -> None:
    records = [_record("gpt2-wikitext2", "adabalancew", 0, 1e-3, 250.0, epochs=None),
               _record("gpt2-wikitext2", "adabalancew", 0, 3e-3, 240.0, epochs=None)]  # fmt: skip
    assert PROTOCOL.best_rate(records, "gpt2-wikitext2", "adabalancew") == 3e-3


def test_which_records_count_as_a_run_of_the_protocol() -> None:
    default_rate = _record("mrpc", "adabalance", 0, 3e-5, 0.8, options={})
    assert find_run([default_rate], "mrpc", "adabalance", 0, 3e-5, 3) is default_rate
    other_option = _record("mrpc", "adabalance", 0, 3e-5, 0.8, options={"beta3": 0.9})
    two_epochs = _record("mrpc", "adabalance", 0, 3e-5, 0.8, epochs=2)
    for record in (other_option, two_epochs):
        assert find_run([record], "mrpc", "adabalance", 0, 3e-5, 3) is None


def test_the_table_shows_the_grid_the_tuned_rate_and_the_seeds() -> None:
    records = [_record("mrpc", "adabalance", 0, r, v)
               for r, v in ((3e-5, 0.80), (1e-4, 0.86), (3e-4, 0.84))]  # fmt: skip
    records += [_record("mrpc", "adabalance", s, 1e-4, v) for s, v in ((1, 0.84), (2, 0.85))]
    row = next(line for line in PROTOCOL.table(records).splitlines() if "| adabalance |" in line)
    assert "3e-05: 80.00, 0.0001: 86.00, 0.0003: 84.00 | 0.0001 | 3 | 85.00 | 1.00 |" in row


def _main(monkeypatch, capsys, *flags: str) -> str:
    """``glue_quality.py FLAGS`` in this process (the recipe runs it starts are subprocesses, on
    one thread); its stdout. A failed recipe run raises."""
    monkeypatch.setattr(sys, "argv", ["glue_quality.py", *flags])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    capsys.readouterr()
    glue_quality.main()
    return capsys.readouterr().out


@pytest.mark.slow
def test_glue_quality_runs_the_protocol_and_continues_where_it_stopped(
    sentiment_data, tiny_glue_model, tmp_path, monkeypatch, capsys
) -> None:
    flags = [
        "--glue_dir", str(sentiment_data.parent), "--tasks", "sst2", "--optimizers", "adabalance",
        "--lr_grid", "1e-3", "3e-3", "--seeds", "0", "--num_train_epochs", "1",
        "--max_seq_length", "16", "--batch_size", "8", "--model", str(tiny_glue_model()),
        "--results_dir", str(tmp_path), "--name", "tuned",
    ]  # fmt: skip
    _main(monkeypatch, capsys, *flags)
    records = json.loads((tmp_path / "tuned.json").read_text())
    # seed 0 over the grid (each rate reaches the recipe); the seeds at the best: unit-tested above
    assert [(r["seed"], r["learning_rate"]) for r in records] == [(0, 1e-3), (0, 3e-3)]
    assert all(r["epochs"] == 1 and r["train_examples"] == 8000 for r in records)
    assert records[0]["train_loss"] != records[1]["train_loss"]  # the rate reached the optimizer
    best = max(records, key=lambda r: r["value"])["learning_rate"]
    assert f"| {best:g} | 1 |" in (tmp_path / "tuned.md").read_text()
    again = _main(monkeypatch, capsys, *flags)
    assert "sst2 adabalance seed" not in again  # none left
    assert json.loads((tmp_path / "tuned.json").read_text()) == records


def test_the_plots_take_the_runs_at_each_tuned_rate() -> None:
    from plot_quality import tuned_runs

    records = [_record("mrpc", "adamw", 0, r, v) for r, v in ((3e-5, 0.82), (1e-4, 0.85))]
    records += [_record("mrpc", "adamw", 1, 1e-4, 0.84), _record("mrpc", "adamw", 1, 3e-5, 0.9),
                _record("mrpc", "adamw", 0, 1e-4, 0.99, options={"beta3": 0.9})]  # fmt: skip
    kept = tuned_runs(records)
    assert [(r["seed"], r["learning_rate"]) for r in kept] == [(0, 1e-4), (1, 1e-4)]


def test_a_tuned_plot_draws_one_curve_per_optimizer_and_rate() -> None:
    from plot_quality import curves_by_task

    # seed 0 ran at the recipe's default rate (no option), seed 1 was given that rate
    records = [_record("mrpc", "adabalance", 0, 3e-5, 0.8, options={}),
               _record("mrpc", "adabalance", 1, 3e-5, 0.8)]  # fmt: skip
    for record, loss in zip(records, (0.7, 0.6), strict=True):
        record["train_loss"] = [[10, loss]]
    assert dict(curves_by_task(records, tuned=True)["mrpc"]) == {
        "adabalance (lr=3e-05)": [[[10, 0.7]], [[10, 0.6]]]
    }
    assert len(curves_by_task(records)["mrpc"]) == 2  # the recipe's settings view keeps options


def test_gpt2_runs_at_another_rate_are_told_apart_from_the_default_rate(monkeypatch) -> None:
    def plan(*flags: str) -> list:
        monkeypatch.setattr(sys, "argv", ["glue_quality.py", "--tasks", "--wikitext_dir", "w",
                                          "--seeds", "0", *flags])  # fmt: skip
        return glue_quality.gpt2_plan(glue_quality.parse_args())

    # the records of earlier runs at 1e-3 have no rate option: their keys must stay the same
    assert plan("--gpt2_optim_args", "", "beta3=0.9") == [
        ("gpt2-wikitext2", "adabalancew", 0, {}),
        ("gpt2-wikitext2", "adabalancew", 0, {"optim_args": "beta3=0.9"}),
        ("gpt2-wikitext2", "adamw_torch", 0, {}),
    ]
    assert plan("--gpt2_learning_rate", "3e-3", "--gpt2_optim_args", "beta3=0.9") == [
        ("gpt2-wikitext2", "adabalancew", 0, {"optim_args": "beta3=0.9", "learning_rate": 3e-3}),
        ("gpt2-wikitext2", "adamw_torch", 0, {"learning_rate": 3e-3}),
    ]


@pytest.mark.parametrize("flags", [["--gpt2_learning_rate", "3e-3"], ["--gpt2_optim_args", "x=1"]])
def test_gpt2_run_settings_are_refused_with_lr_grid(monkeypatch, capsys, flags) -> None:
    argv = ["glue_quality.py", "--tasks", "--wikitext_dir", "w", "--lr_grid", "1e-3", *flags]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        glue_quality.parse_args()
    assert "--gpt2_learning_rate/--gpt2_optim_args do not apply" in capsys.readouterr().err


def test_the_comparison_weighs_the_lead_against_the_seed_spread() -> None:
    records = [_record("mrpc", "adabalance", 0, r, v)
               for r, v in ((3e-5, 0.80), (1e-4, 0.86), (3e-4, 0.84))]  # fmt: skip
    records += [_record("mrpc", "adabalance", s, 1e-4, v) for s, v in ((1, 0.84), (2, 0.85))]
    records += [_record("mrpc", "adamw", 0, r, v)
                for r, v in ((3e-5, 0.80), (1e-4, 0.78), (3e-4, 0.70))]  # fmt: skip
    records.append(_record("mrpc", "adamw", 1, 3e-5, 0.81))
    assert "| mrpc |" not in PROTOCOL.comparison(records)  # AdamW's seed 2 has not run
    records.append(_record("mrpc", "adamw", 2, 3e-5, 0.79))
    # means 85 and 80, standard deviations 1 and 1: SE = sqrt(1/3 + 1/3) = 0.816, lead 6.1 SE
    row = next(line for line in PROTOCOL.comparison(records).splitlines() if "| mrpc |" in line)
    assert row == "| mrpc | adabalance | adamw | +5.00 | +6.2% | 0.82 | +6.1 | adabalance |"


def test_a_lead_under_two_standard_errors_is_even_and_perplexity_leads_when_lower() -> None:
    protocol = TunedProtocol(optimizers={"gpt2-wikitext2": ["adabalancew", "adamw_torch"]},
                             grids={"gpt2-wikitext2": [3e-3]}, seeds={"gpt2-wikitext2": [1, 2]},
                             epochs={"gpt2-wikitext2": None})  # fmt: skip
    runs = {"adabalancew": (211.0, 221.0, 207.0), "adamw_torch": (222.0, 214.0, 211.0)}
    records = [_record("gpt2-wikitext2", name, seed, 3e-3, value, epochs=None)
               for name, values in runs.items() for seed, value in enumerate(values)]  # fmt: skip
    # means 213 and 215.667: AdaBalance leads by 2.67; variances 52 and 32.33: SE 5.30
    row = protocol.comparison(records).splitlines()[-1]
    assert row == (
        "| gpt2-wikitext2 | adabalancew | adamw_torch | +2.67 | +1.2% | 5.30 | +0.5 | even |"
    )


@pytest.mark.slow
def test_a_gpt2_record_keeps_the_settings_its_optimizer_ran_with(
    tmp_path, monkeypatch, capsys
) -> None:
    from test_recipe_gpt2 import _text

    (tmp_path / "test.txt").write_text(_text(400, 0))  # the names WikiText-2's folder has
    (tmp_path / "valid.txt").write_text(_text(80, 1))
    _main(monkeypatch, capsys, "--tasks",
          "--wikitext_dir", str(tmp_path), "--optimizers", "adabalance", "--seeds", "0",
          "--gpt2_steps", "3", "--gpt2_optim_args", "final_lr=0.2",
          "--results_dir", str(tmp_path), "--name", "gpt2")  # fmt: skip
    (record,) = json.loads((tmp_path / "gpt2.json").read_text())
    assert record["options"] == {"optim_args": "final_lr=0.2"}
    # final_lr from --gpt2_optim_args, beta3 the recipe's default, gamma the name's
    settings = record["optimizer_settings"]
    assert settings == {"class": "AdaBalance", "final_lr": 0.2, "gamma": 1e-4, "beta3": 0.99,
                        "weight_decay": 0.01}  # fmt: skip


def test_merging_queues_needs_no_data_and_keeps_each_run_once(tmp_path) -> None:
    first = [_record("mrpc", "adamw", 0, 1e-4, 0.86), _record("mrpc", "adamw", 1, 1e-4, 0.85)]
    second = [_record("mrpc", "adamw", 1, 1e-4, 0.85), _record("rte", "adamw", 0, 3e-5, 0.57)]
    for record in (*first, *second):
        record["wall_time_s"] = 60.0  # the table's mean run time
    for name, records in (("queue_a", first), ("queue_b", second)):
        (tmp_path / f"{name}.json").write_text(json.dumps(records))
    command = [
        sys.executable, str(ROOT / "benchmarks" / "glue_quality.py"), "--tasks", "mrpc", "rte",
        "--results_dir", str(tmp_path), "--merge", "queue_a", "queue_b", "--name", "merged",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]  # no --glue_dir: merging runs nothing
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged == [*first, second[1]]  # mrpc seed 1 is in both queues: kept once


def test_the_dev_panel_shows_the_scored_metric_by_epoch_in_the_loss_curves_colour() -> None:
    from plot_quality import curves_by_task, dev_curves_by_task, draw_task

    records = []
    for optimizer, seed, f1 in (("adabalance", 0, (0.80, 0.84)), ("adabalance", 1, (0.82, 0.86)),
                                ("adamw", 0, (0.70, 0.90))):  # fmt: skip
        record = _record("mrpc", optimizer, seed, 3e-5, f1[-1])
        record["train_loss"] = [[10, 0.7], [20, 0.6]]
        record["metrics_per_epoch"] = [{"accuracy": 0.5, "f1": value} for value in f1]
        records.append(record)
    gpt2 = _record("gpt2-wikitext2", "adamw_torch", 0, 3e-3, 215.0, epochs=None)
    dev = dev_curves_by_task([*records, gpt2], tuned=True)
    assert set(dev) == {"mrpc"}  # GPT-2's records have no per-epoch metric
    assert dev["mrpc"]["adabalance (lr=3e-05)"] == [[(1, 0.80), (2, 0.84)], [(1, 0.82), (2, 0.86)]]
    figure = draw_task("mrpc", curves_by_task(records, True)["mrpc"], "f1", dev["mrpc"])
    loss_axis, dev_axis = figure.axes
    lines = {line.get_label(): line for line in dev_axis.get_lines()}
    ours = lines["adabalance (lr=3e-05), 2 seed(s)"]
    assert list(ours.get_xdata()) == [1, 2]
    assert np.allclose(ours.get_ydata(), [0.81, 0.85])  # the mean over the seeds, of F1
    loss_colours = {line.get_label(): line.get_color() for line in loss_axis.get_lines()}
    assert loss_colours == {label: line.get_color() for label, line in lines.items()}
    assert len(set(loss_colours.values())) == 2
