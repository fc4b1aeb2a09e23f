"""The tuned comparison's protocol: a learning-rate grid at seed 0, then more seeds at the best.

For each task and optimizer, every rate of the task's grid runs at seed 0; the rate with the
best seed-0 result (highest GLUE metric, lowest perplexity) is that optimizer's tuned rate for the
task, and the task's remaining seeds run at it. The plan is recomputed from the records after
every run, so a benchmark stopped half-way continues where it stopped.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["TunedProtocol", "find_run", "record_rate", "tuned_runs"]

Run = tuple[str, str, int, dict]  # (task, optimizer, seed, options)


def _lower_is_better(task: str) -> bool:
    return task.startswith("gpt2")


def record_rate(record: dict) -> float:
    """A run's learning rate: its ``learning_rate`` option, else the recipe default it ran at."""
    return float(record.get("options", {}).get("learning_rate", record["learning_rate"]))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def find_run(records: Iterable[dict], task: str, optimizer: str, seed: int, rate: float,
             epochs: int | None) -> dict | None:  # fmt: skip
    """The record of one run at ``rate`` and ``epochs`` (``None``: any), if there is one.

    A run at the recipe's default rate (no ``learning_rate`` option, the rate in its record)
    counts as a run at that rate; a run with any other option does not count.
    """
    for record in records:
        other = {k: v for k, v in record.get("options", {}).items() if k != "learning_rate"}
        if (record["task"], record["optimizer"], record["seed"]) != (task, optimizer, seed):
            continue
        if other or not _close(record_rate(record), rate):
            continue
        if epochs is not None and record.get("epochs", epochs) != epochs:
            continue
        return record
    return None


@dataclass(frozen=True)
class TunedProtocol:
    """What the tuned comparison runs.

    Attributes:
        optimizers (dict): per task, the optimizer names as the records call them.
        grids (dict): per task, the learning rates tried at seed 0.
        seeds (dict): per task, the seeds run at the tuned rate (0 is the grid's own run).
        epochs (dict): per task, the epochs a run must have (``None``: not checked).
    """

    optimizers: dict[str, Sequence[str]]
    grids: dict[str, Sequence[float]]
    seeds: dict[str, Sequence[int]]
    epochs: dict[str, int | None]

    def best_rate(self, records: Sequence[dict], task: str, optimizer: str) -> float | None:
        """The grid rate with the best seed-0 result, or ``None`` while a grid run is missing."""
        grid = self.grids[task]
        found = [find_run(records, task, optimizer, 0, r, self.epochs[task]) for r in grid]
        if any(record is None for record in found):
            return None
        sign = -1.0 if _lower_is_better(task) else 1.0
        values = [sign * record["value"] for record in found]  # type: ignore[index]
        return grid[values.index(max(values))]

    def plan(self, records: Sequence[dict]) -> list[Run]:
        """The runs still to do, in order: the grid at seed 0, then the seeds at the best rate."""
        plan: list[Run] = []
        for task, optimizers in self.optimizers.items():
            for optimizer in optimizers:
                rates = list(self.grids[task])
                best = self.best_rate(records, task, optimizer)
                seeds = [0] * len(rates) + ([] if best is None else list(self.seeds[task]))
                rates += [] if best is None else [best] * len(self.seeds[task])
                for seed, rate in zip(seeds, rates, strict=True):
                    if find_run(records, task, optimizer, seed, rate, self.epochs[task]) is None:
                        plan.append((task, optimizer, seed, {"learning_rate": rate}))
        return plan

    def table(self, records: Sequence[dict]) -> str:
        """Markdown: per task and optimizer, seed 0 over the grid, the tuned rate, its seeds."""
        lines = [
            "| task | metric | optimizer | seed 0 over the grid | tuned lr | seeds | mean | std "
            "| values |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for task, optimizers in self.optimizers.items():
            epochs = self.epochs[task]
            for optimizer in optimizers:
                grid = [(r, find_run(records, task, optimizer, 0, r, epochs))
                        for r in self.grids[task]]  # fmt: skip
                cells = [f"{r:g}: {'-' if x is None else _shown(task, x)}" for r, x in grid]
                best = self.best_rate(records, task, optimizer)
                runs = self.tuned_records(records, task, optimizer)
                values = [_shown(task, r) for r in runs]
                numbers = [_value(task, r) for r in runs]
                lines.append(
                    f"| {task} | {runs[0]['metric'] if runs else '-'} | {optimizer} | "
                    f"{', '.join(cells)} | {'-' if best is None else f'{best:g}'} | {len(runs)} "
                    f"| {f'{statistics.mean(numbers):.2f}' if numbers else '-'} | "
                    f"{f'{statistics.stdev(numbers):.2f}' if len(numbers) > 1 else '-'} | "
                    f"{', '.join(values)} |"
                )
        return "\n".join(lines) + "\n"

    def tuned_records(self, records: Sequence[dict], task: str, optimizer: str) -> list[dict]:
        """The runs so far of the task's seeds at the optimizer's tuned rate, by seed."""
        best = self.best_rate(records, task, optimizer)
        if best is None:
            return []
        runs = [find_run(records, task, optimizer, seed, best, self.epochs[task])
                for seed in sorted({0, *self.seeds[task]})]  # fmt: skip
        return [record for record in runs if record is not None]

    def comparison(self, records: Sequence[dict]) -> str:
        """Markdown: per task whose first two optimizers have all their seeds at the tuned rate,
        the first one's lead (positive: it is better) against the standard error of the
        difference of the means, ``sqrt(s1^2/n1 + s2^2/n2)``; a lead under 2 standard errors is
        called even."""
        lines = [
            "| task | first | second | lead of the first | lead / mean of the second | "
            "standard error | lead / SE | at 2 SE |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for task, optimizers in self.optimizers.items():
            if len(optimizers) < 2:
                continue
            first, second = optimizers[0], optimizers[1]
            values = [[_value(task, r) for r in self.tuned_records(records, task, name)]
                      for name in (first, second)]  # fmt: skip
            wanted = len({0, *self.seeds[task]})
            if any(len(v) != wanted for v in values) or wanted < 2:
                continue
            means = [statistics.mean(v) for v in values]
            sign = -1.0 if _lower_is_better(task) else 1.0
            lead = sign * (means[0] - means[1])
            error = math.sqrt(sum(statistics.variance(v) / len(v) for v in values))
            verdict = (
                "even" if abs(lead) < 2 * error or lead == 0 else (first if lead > 0 else second)
            )
            ratio = f"{lead / error:+.1f}" if error else "-"
            lines.append(
                f"| {task} | {first} | {second} | {lead:+.2f} | {100 * lead / means[1]:+.1f}% | "
                f"{error:.2f} | {ratio} | {verdict} |"
            )
        return "\n".join(lines) + "\n"


def _value(task: str, record: dict) -> float:
    """A run's result as the tables show it: GLUE metrics in %, perplexity as is."""
    return record["value"] if _lower_is_better(task) else 100 * record["value"]


def _shown(task: str, record: dict) -> str:
    return f"{_value(task, record):.2f}"


def tuned_runs(records: Sequence[dict]) -> list[dict]:
    """The runs at each task's and optimizer's tuned rate, inferred from the records alone: the
    rate of the best seed-0 run among those with no option but ``learning_rate``."""
    best: dict[tuple[str, str], dict] = {}
    for record in records:
        if record["seed"] != 0 or set(record.get("options", {})) - {"learning_rate"}:
            continue
        key = (record["task"], record["optimizer"])
        sign = -1.0 if _lower_is_better(record["task"]) else 1.0
        if key not in best or sign * record["value"] > sign * best[key]["value"]:
            best[key] = record
    return [
        record for record in records
        if (chosen := best.get((record["task"], record["optimizer"]))) is not None
        and not set(record.get("options", {})) - {"learning_rate"}
        and _close(record_rate(record), record_rate(chosen))
    ]  # fmt: skip
