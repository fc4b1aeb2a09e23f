"""Learning curves of the quality benchmark: training loss per step, AdaBalance vs the others.

Reads the records ``benchmarks/glue_quality.py`` wrote (``<results_dir>/<name>.json``) and draws
one PNG per task, ``<results_dir>/<name>_<task>.png``: the training loss of every optimizer
against the optimizer step and, for GLUE, the dev-set metric after each epoch beside it; the mean
over seeds as a line and the range over seeds as a band. Example::

    python benchmarks/plot_quality.py --name glue_quality
    python benchmarks/plot_quality.py --name glue_tuned --tuned  # each one's tuned rate
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from _lr_grid import record_rate, tuned_runs  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="glue_quality")
    p.add_argument(
        "--all_settings",
        action="store_true",
        help="also plot the runs with non-default options (the sweeps); by default only the "
        "runs at each optimizer's recipe defaults",
    )
    p.add_argument(
        "--tuned",
        action="store_true",
        help="the runs of glue_quality.py --lr_grid at each optimizer's tuned rate per task",
    )
    return p.parse_args()


def _label(record: dict, tuned: bool = False) -> str:
    """The curve's name: the optimizer and its options; for a tuned run the optimizer and its
    rate (a run at the recipe's default rate and one given that rate are the same setting)."""
    if tuned:
        return f"{record['optimizer']} (lr={record_rate(record):g})"
    options = record.get("options") or {}
    extra = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in options.items())  # fmt: skip
    return f"{record['optimizer']} ({extra})" if extra else record["optimizer"]


Curves = dict[str, dict[str, list[list[tuple[int, float]]]]]


def _group_curves(records: list[dict], tuned: bool, curve: Callable[[dict], list | None]) -> Curves:
    """``{task: {optimizer label: [curve(record) per seed]}}``, records without a curve left out."""
    found: dict = defaultdict(lambda: defaultdict(list))
    for record in records:
        if points := curve(record):
            found[record["task"]][_label(record, tuned)].append(points)
    return found


def curves_by_task(records: list[dict], tuned: bool = False) -> Curves:
    """``{task: {optimizer label: [one (step, loss) curve per seed]}}``, runs without a curve
    left out; ``tuned``: the runs of the tuned comparison, labelled by their rate."""
    return _group_curves(records, tuned, lambda record: record.get("train_loss"))


def dev_curves_by_task(records: list[dict], tuned: bool = False) -> Curves:
    """``{task: {optimizer label: [one (epoch, dev metric) curve per seed]}}`` of the GLUE runs
    (GPT-2's records have no per-epoch metric); the metric is the one the task is scored by."""

    def by_epoch(record: dict) -> list | None:
        epochs = record.get("metrics_per_epoch")
        return epochs and list(enumerate((epoch[record["metric"]] for epoch in epochs), 1))

    return _group_curves(records, tuned, by_epoch)


def _draw_band(ax, label: str, runs: list[list[tuple[int, float]]], **style) -> None:
    """The mean over seeds as a line, their range as a band (the runs cut to the shortest)."""
    length = min(len(run) for run in runs)
    x = np.array([x for x, _ in runs[0][:length]])
    y = np.array([[y for _, y in run[:length]] for run in runs])
    (line,) = ax.plot(x, y.mean(axis=0), label=f"{label}, {len(runs)} seed(s)", **style)
    if len(runs) > 1:
        ax.fill_between(x, y.min(axis=0), y.max(axis=0), alpha=0.2, color=line.get_color())


def draw_task(task: str, curves: dict[str, list], metric: str, dev_curves: dict | None = None):
    """The task's figure: training loss by step and, given ``dev_curves``, the dev metric by
    epoch on a second axis; one colour per optimizer label on both."""
    fig, axes = plt.subplots(1, 2 if dev_curves else 1, figsize=(11, 4) if dev_curves else (6.4, 4))
    axes = np.atleast_1d(axes)
    labels = sorted(set(curves) | set(dev_curves or {}))
    # tab10's colours are the most distinct; tab20 (pairs of shades) for up to 20 settings
    palette = (plt.cm.tab10 if len(labels) <= 10 else plt.cm.tab20).colors
    colours = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    for label in labels:
        if label in curves:
            _draw_band(axes[0], label, curves[label], color=colours[label])
        if dev_curves and label in dev_curves:
            _draw_band(axes[1], label, dev_curves[label], color=colours[label], marker="o")
    name = metric.split(" (")[0]
    axes[0].set(xlabel="optimizer step", ylabel="training loss",
                title=f"{task}: training loss (scored by {name})")  # fmt: skip
    if dev_curves:
        axes[1].set(xlabel="epoch", ylabel=f"dev {name}", title=f"{task}: dev {name} by epoch")
        axes[1].xaxis.get_major_locator().set_params(integer=True)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_task(
    task: str, curves: dict[str, list], metric: str, path: Path, dev_curves: dict | None = None
) -> None:
    """Draw the task's figure (``draw_task``) into the PNG ``path``."""
    fig = draw_task(task, curves, metric, dev_curves)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    results_dir = Path(args.results_dir)
    records = json.loads((results_dir / f"{args.name}.json").read_text())
    if args.tuned:
        records = tuned_runs(records)
    elif not args.all_settings:
        records = [r for r in records if not r.get("options")]
    metrics = {r["task"]: r["metric"] for r in records}
    dev_curves = dev_curves_by_task(records, args.tuned)
    for task, curves in sorted(curves_by_task(records, args.tuned).items()):
        path = results_dir / f"{args.name}_{task}.png"
        plot_task(task, curves, metrics[task], path, dev_curves.get(task))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
