"""The end of a GLUE recipe run: final model, results.json, learning curve and summary line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from _plots import plot_learning_curve

__all__ = ["write_results"]

# arguments that say how this process was started, not what was trained
_NOT_CONFIG = ("debug_interrupt_at_step", "resume_from_checkpoint")


def write_results(accelerator, args, model, tokenizer, progress, data, metric_name, started):
    """Save the model and tokenizer, ``results.json`` and ``learning_curve.png`` (main process)."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    out = Path(args.output_dir)
    accelerator.unwrap_model(model).save_pretrained(out)
    tokenizer.save_pretrained(out)
    history = progress["history"]
    final = history[-1]["metrics"] if history else {}
    config = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
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
        "nonfinite_steps_skipped": progress.get("nonfinite_steps_skipped"),
        "resumed_from": progress.get("resumed_from", []),
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
    skipped = progress.get("nonfinite_steps_skipped")
    if skipped:
        summary += f"; {skipped} optimizer step(s) skipped for non-finite gradients"
    accelerator.print(f"done in {results['wall_time_s']:.1f} s: {summary}; wrote {out}")
