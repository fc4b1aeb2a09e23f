"""Which AdaBalance defaults should the Trainer names (``optim="adabalance"`` ...) get?

Issue 12, item 1. Every run goes through transformers' ``Trainer`` flow: the stock
``TrainingArguments(optim=NAME, optim_args=STRING)`` (``import adabalance_hf`` registers the names)
and ``AdaBalanceTrainer``, one setting per run, and the options are given only as ``optim`` plus an
``optim_args`` string (the ``--adabalance_*`` fields are being removed). Every setting passes its
``optim_args`` explicitly, so a change of the names' own defaults cannot change what a run means;
the optimizer's real hyper-parameters are read back from its param groups into each record.

Subcommands:

``glue``
    A tiny BERT (``BertConfig``: 2 layers, hidden 64, randomly initialised) with a regression
    head (``num_labels=1``, MSE loss) on a GLUE task, lr 1e-3, batch 16, 60 steps, linear decay
    to 0 with no warmup (the Trainer's default schedule). The text is tokenised with a WordPiece
    tokenizer whose vocabulary is built here from the task's training sentences. Metrics on the
    dev set: MSE and Pearson (scipy), also Spearman and, for 0/1 labels, accuracy (and F1) at a
    0.5 threshold.
    Tasks: ``stsb`` (STS-B, scores 0-5, read from ``GLUE_DIR/STS-B``), and, as stand-ins where
    STS-B is not available, ``mrpc`` (sentence pairs) and ``sst2`` (single sentences) with their
    0/1 labels as regression targets.
``gpt2``
    The GPT-2 recipe (``recipes/gpt2.py``, run as a subprocess as ``benchmarks/glue_quality.py``
    runs it): a 2-layer 128-wide GPT-2 from a config, a byte-level BPE tokenizer trained on
    WikiText-2 ``test.txt``, 300 steps (30 warmup), lr 1e-3, weight decay 0.01, batch 16,
    validation perplexity on ``valid.txt``.
``table``
    Print the markdown table (mean and sample standard deviation over seeds) of the records.

Records are appended to ``--out`` (JSON); a (task, setting, seed) already there is skipped
unless ``--force``. Examples::

    python benchmarks/name_defaults.py glue --task mrpc --seeds 0 1 2
    python benchmarks/name_defaults.py gpt2 --settings adabalancew:beta3=0.9,gamma=1e-4
    python benchmarks/name_defaults.py table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _regression_glue import TASKS, glue_data, regression_metrics  # benchmarks/, this folder
from glue_quality import gpt2_command

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
from gpt2 import fill_open_options  # noqa: E402  (the recipe's own way of filling optim_args)

DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "name_defaults.json"

# setting label -> (optim, optim_args, weight_decay)
PAPER = "beta3=0.999,gamma=1e-3"
GLUE_RECIPE = "beta3=0.9,gamma=1e-4"
GPT2_RECIPE = "beta3=0.99,gamma=1e-4"
SETTINGS: dict[str, tuple[str, str, float]] = {
    "adamw_torch": ("adamw_torch", "", 0.01),
    f"adabalance:{PAPER}": ("adabalance", PAPER, 0.0),
    f"adabalance:{GLUE_RECIPE}": ("adabalance", GLUE_RECIPE, 0.0),
    f"adabalance:{GPT2_RECIPE}": ("adabalance", GPT2_RECIPE, 0.0),
    f"adabalancew:{GLUE_RECIPE}": ("adabalancew", GLUE_RECIPE, 0.01),
    f"adabalancew:{GPT2_RECIPE}": ("adabalancew", GPT2_RECIPE, 0.01),
    f"adabalancew:{PAPER}": ("adabalancew", PAPER, 0.01),
}
GLUE_SETTINGS = list(SETTINGS)[:6]
GPT2_SETTINGS = [f"adabalancew:{GLUE_RECIPE}"]


def parse_setting(label: str) -> tuple[str, str, float]:
    """``optim[:optim_args]`` -> (optim, optim_args, weight_decay); the known labels or any."""
    if label in SETTINGS:
        return SETTINGS[label]
    optim, _, optim_args = label.partition(":")
    return optim, optim_args, 0.0 if optim in ("adabalance", "adabalance_amsbound") else 0.01


def git_state() -> dict:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("adabalance_hf/**/*.py"), *ROOT.glob("recipes/*.py")]):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "commit": git("rev-parse", "HEAD"),
        # Other engineers edit the tree while these runs go: the working tree's package and
        # recipe sources, hashed, tell which runs saw the same code.
        "package_dirty": bool(git("status", "--porcelain", "--", "adabalance_hf", "recipes")),
        "package_sha256": digest.hexdigest()[:16],
    }


def optimizer_settings(trainer) -> dict:
    """The hyper-parameters the optimizer really has (decayed group first)."""
    inner = trainer.optimizer
    while hasattr(inner, "optimizer"):
        inner = inner.optimizer
    groups = []
    for group in inner.param_groups:
        values = {}
        for key, value in group.items():
            if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:
                value = value.item()  # a 0-dim tensor lr
            if key != "params" and isinstance(value, (int, float, bool, str, tuple, type(None))):
                values[key] = value
        groups.append(values)
    return {"class": type(inner).__name__, "groups": groups}


def glue_run(args, label: str, seed: int) -> dict:
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DataCollatorWithPadding,
        TrainingArguments,
        set_seed,
    )

    from adabalance_hf import AdaBalanceTrainer

    optim, optim_args, weight_decay = parse_setting(label)
    tokenizer, train_set, dev_set, binary = glue_data(args)
    started = time.time()
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            optim=optim,
            optim_args=optim_args or None,
            learning_rate=args.learning_rate,
            weight_decay=weight_decay,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=128,
            max_steps=args.steps,
            logging_steps=10,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            seed=seed,
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        set_seed(seed)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=256,
            max_position_embeddings=args.max_length,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = BertForSequenceClassification(config)
        trainer = AdaBalanceTrainer(
            model=model,
            args=training_args,
            train_dataset=train_set,
            eval_dataset=dev_set,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=regression_metrics(binary),
        )
        trainer.train()
        metrics = trainer.evaluate()
        settings = optimizer_settings(trainer)
        history = trainer.state.log_history
        steps = trainer.state.global_step
    wall = time.time() - started
    diagnostics = [
        {k: v for k, v in entry.items() if k.startswith("adabalance/") or k == "step"}
        for entry in history
        if any(k.startswith("adabalance/") for k in entry)
    ]
    record = {
        "task": args.task,
        "setting": label,
        "optim": optim,
        "optim_args": optim_args,
        "weight_decay": weight_decay,
        "seed": seed,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "steps": steps,
        "train_examples": len(train_set),
        "dev_examples": len(dev_set),
        "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "metrics": {k.removeprefix("eval_"): v for k, v in metrics.items()},
        "train_loss": [(e["step"], e["loss"]) for e in history if "loss" in e],
        "optimizer": settings,
        "adabalance_diagnostics_last": diagnostics[-1] if diagnostics else None,
        "adabalance_diagnostics": diagnostics,
        "wall_time_s": wall,
        **git_state(),
    }
    return record


# --------------------------------------------------------------------------- GPT-2 recipe


def with_name_defaults(optim: str, optim_args: str) -> str:
    """``optim_args`` with the names' fine-tuning defaults it leaves open written out, so the
    GPT-2 recipe's own defaults (``DEFAULT_OPTIM_ARGS``) do not change what a setting means."""
    from adabalance_hf import FINE_TUNING_DEFAULTS

    return fill_open_options(optim, optim_args, FINE_TUNING_DEFAULTS)[0]


def gpt2_run(args, label: str, seed: int) -> dict:
    optim, optim_args, _ = parse_setting(label)
    optim_args = with_name_defaults(optim, optim_args)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    started = time.time()
    with tempfile.TemporaryDirectory() as out:
        # the quality benchmark's GPT-2 run, so that the two benchmarks' records compare
        command = gpt2_command(
            args.wikitext_dir, out, optim, args.learning_rate, args.steps, seed, optim_args
        )
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"gpt2 recipe failed ({done.returncode}):\n{done.stderr[-4000:]}")
        results = json.loads((Path(out) / "results.json").read_text())
    wall = time.time() - started
    history = results["log_history"]
    return {
        "task": "gpt2-wikitext2",
        "setting": label,
        "optim": optim,
        "optim_args": optim_args,
        "weight_decay": 0.01,
        "seed": seed,
        "learning_rate": args.learning_rate,
        "batch_size": 16,
        "steps": max(e.get("step", 0) for e in history),
        "num_parameters": results["num_parameters"],
        "torch_threads": 1,
        "metrics": {"perplexity": results["validation_perplexity"], **results["eval_metrics"]},
        "train_loss": [(e["step"], e["loss"]) for e in history if "loss" in e],
        "optimizer": results["optimizer"],
        "recipe_defaults_applied": results["recipe_defaults_applied"],
        "wall_time_s": wall,
        **git_state(),
    }


# --------------------------------------------------------------------------- records, table


def load_records(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def save_records(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=1, default=str) + "\n")
    tmp.replace(path)


def mean_sd(values: list[float], digits: int = 3) -> str:
    """Mean ± sample standard deviation; NaN values (a constant prediction has no Pearson) are
    left out and counted."""
    finite = [v for v in values if not math.isnan(v)]
    missing = f" ({len(values) - len(finite)} nan)" if len(finite) < len(values) else ""
    if not finite:
        return "nan"
    if len(finite) == 1:
        return f"{finite[0]:.{digits}f}{missing}"
    return f"{statistics.mean(finite):.{digits}f} ± {statistics.stdev(finite):.{digits}f}{missing}"


def table(records: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["steps"], r["setting"]), []).append(r)
    lines = []
    for task, steps in dict.fromkeys((r["task"], r["steps"]) for r in records):
        first = next(r for r in records if (r["task"], r["steps"]) == (task, steps))
        keys = ["perplexity"] if task == "gpt2-wikitext2" else ["mse", "pearson"]
        if "accuracy" in first["metrics"]:
            keys.append("accuracy")
        lines += [
            f"\n{task}, {steps} steps\n",
            "| setting | weight decay | seeds | "
            + " | ".join(keys)
            + f" | {keys[0]} per seed | wall s/run |",
            "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " | --- | --- |",
        ]
        for (t, n, label), runs in groups.items():
            if (t, n) != (task, steps):
                continue
            runs = sorted(runs, key=lambda r: r["seed"])
            digits = 2 if task == "gpt2-wikitext2" else 3
            cells = [mean_sd([r["metrics"][k] for r in runs], digits) for k in keys]
            per_seed = ", ".join(f"{r['metrics'][keys[0]]:.{digits}f}" for r in runs)
            lines.append(
                f"| {label} | {runs[0]['weight_decay']:g} | "
                f"{','.join(str(r['seed']) for r in runs)} | "
                + " | ".join(cells)
                + f" | {per_seed} | {statistics.mean(r['wall_time_s'] for r in runs):.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["glue", "gpt2", "table"])
    parser.add_argument("--task", choices=sorted(TASKS), default="stsb", help="for glue")
    parser.add_argument("--glue_dir", default=str(DATA / "glue"))
    parser.add_argument("--wikitext_dir", default=str(DATA / "wikitext-2"))
    parser.add_argument("--settings", nargs="+", default=None,
                        help="labels optim[:optim_args]; default: the issue's list for the "
                        "command")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="60 (glue) or 300 (gpt2)")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--force", action="store_true", help="rerun runs already recorded")
    args = parser.parse_args(argv)

    out = Path(args.out)
    records = load_records(out)
    if args.command == "table":
        print(table(records))
        return

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    task = args.task if args.command == "glue" else "gpt2-wikitext2"
    if args.steps is None:
        args.steps = 60 if args.command == "glue" else 300
    labels = args.settings or (GLUE_SETTINGS if args.command == "glue" else GPT2_SETTINGS)
    run = glue_run if args.command == "glue" else gpt2_run
    for label in labels:
        for seed in args.seeds:
            done = [
                r
                for r in records
                if (r["task"], r["setting"], r["seed"], r["steps"])
                == (task, label, seed, args.steps)
            ]
            if done and not args.force:
                print(f"skip {task} {label} seed {seed}: recorded", flush=True)
                continue
            record = run(args, label, seed)
            records = [r for r in load_records(out) if r not in done] + [record]
            save_records(out, records)
            shown = {k: round(v, 4) for k, v in record["metrics"].items() if isinstance(v, float)}
            print(
                f"{task} {label} seed {seed}: {shown} ({record['wall_time_s']:.0f} s)", flush=True
            )


if __name__ == "__main__":
    main()
