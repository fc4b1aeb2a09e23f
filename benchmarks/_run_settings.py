"""Whether a stored run was made with the AdaBalance settings the same run would get today.

``glue_quality.py`` names a run by what it passes to a recipe (task, optimizer, seed, options);
the rest comes from the recipes' defaults, and those change (the GPT-2 recipe's ``final_lr`` went
from 0.1 to 0.3). A record made under older defaults is another run: counting it as done would
put two settings into one mean. The settings a run gets are read from the recipes' own argument
parsing, not restated here.
"""

from __future__ import annotations

import importlib
import math
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

__all__ = ["KEYS", "expected_settings", "recorded_settings", "refuse_stale_runs", "stale_runs"]

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("final_lr", "gamma", "beta3")  # the settings a record keeps (glue.py's own flags)


@cache
def _recipe(name: str) -> ModuleType:
    # imported from recipes/ as benchmarks/name_defaults.py and the recipe tests do; lazily,
    # since a recipe imports transformers
    if str(ROOT / "recipes") not in sys.path:
        sys.path.insert(0, str(ROOT / "recipes"))
    return importlib.import_module(name)


def expected_settings(recipe: str, optimizer: str, recipe_argv: list[str]) -> dict[str, float]:
    """The AdaBalance settings of a run today (empty for AdamW).

    Args:
        recipe (str): ``"glue"`` or ``"gpt2"``, the recipe in ``recipes/`` the run drives.
        optimizer (str): the recipe's optimizer name (``--optimizer`` / ``--optim``).
        recipe_argv (list): the recipe's command-line arguments, as the run passes them.
    """
    if not optimizer.startswith("adabalance"):
        return {}
    if recipe == "glue":
        config = vars(_recipe("glue").parse_args(recipe_argv))
    else:
        from adabalance_hf.integrations.transformers import adabalance_optimizer_kwargs

        training_args = _recipe("gpt2").parse(recipe_argv)[2]
        config = adabalance_optimizer_kwargs(training_args)
    return {key: float(config[key]) for key in KEYS}


def recorded_settings(record: dict) -> dict[str, float]:
    """The AdaBalance settings a record says it ran with (GPT-2 records keep them apart)."""
    stored = record.get("optimizer_settings") or record
    return {key: float(stored[key]) for key in KEYS if stored.get(key) is not None}


def stale_runs(records: list[dict], expected: dict[int, dict[str, float]]) -> list[str]:
    """One line per record whose settings are not the ones its run would get today.

    Args:
        records (list): the stored runs.
        expected (dict): record index to :func:`expected_settings` of its run; records without
            an entry are not checked.
    """
    lines = []
    for index, settings in expected.items():
        record = recorded_settings(records[index])
        if all(key in record and math.isclose(record[key], value, rel_tol=1e-9)
               for key, value in settings.items()):  # fmt: skip
            continue
        run = records[index]
        held = ", ".join(f"{k}={record[k]:g}" for k in KEYS if k in record) or "no settings kept"
        now = ", ".join(f"{k}={v:g}" for k, v in settings.items())
        lines.append(f"{run['task']} {run['optimizer']} seed {run['seed']} {run['options']}: "
                     f"ran with {held}; today {now}")  # fmt: skip
    return lines


def refuse_stale_runs(path: Path, records: list[dict], expected: dict[int, dict[str, float]]):
    """Stop with the :func:`stale_runs` of ``records`` (read from ``path``), if there are any."""
    stale = stale_runs(records, expected)
    if stale:
        raise SystemExit(
            f"{path}: {len(stale)} stored run(s) ran with other AdaBalance settings than the same "
            "run gets today, so they cannot count as done:\n  " + "\n  ".join(stale)
            + "\nrun them afresh under another --name (or --results_dir); those records stay "
            "as they are"
        )  # fmt: skip
