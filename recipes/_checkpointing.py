"""Checkpoints for the accelerate recipes: every N steps, on interrupt, and resuming.

A checkpoint is ``accelerator.save_state`` (model, optimizer, registered scheduler, RNG states)
plus ``progress.json`` (optimizer steps done, per-epoch history, elapsed time), in
``<output_dir>/checkpoints/step_<N>``. SIGINT and SIGTERM only set a flag; the training loop
checks it after each optimizer step, saves a checkpoint and stops, so an interrupted run resumes
exactly where it stopped. A second signal stops at once.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import torch

__all__ = ["InterruptFlag", "load_checkpoint", "resolve_checkpoint", "save_checkpoint"]

PROGRESS = "progress.json"


class InterruptFlag:
    """Catches SIGINT/SIGTERM; ``is_set(accelerator)`` agrees across processes."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: give up at once
            self.restore()
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def is_set(self, accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([int(self.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item())


def save_checkpoint(accelerator, output_dir: str | Path, step: int, progress: dict) -> Path:
    """Save the full training state at optimizer step ``step``; returns its folder."""
    path = Path(output_dir) / "checkpoints" / f"step_{step}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / PROGRESS).write_text(json.dumps({**progress, "step": step}, indent=2))
    accelerator.wait_for_everyone()
    return path


def resolve_checkpoint(value: str, output_dir: str | Path) -> Path:
    """``value`` is a checkpoint folder, or ``latest`` for the newest one in ``output_dir``."""
    if value == "latest":
        found = sorted(
            (Path(output_dir) / "checkpoints").glob("step_*"),
            key=lambda p: int(p.name.split("_")[1]),
        )
        found = [p for p in found if (p / PROGRESS).is_file()]
        if not found:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no checkpoint in {output_dir}/checkpoints; "
                f"pass a checkpoint folder or the --output_dir of the interrupted run"
            )
        return found[-1]
    path = Path(value)
    if not (path / PROGRESS).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {value}: not a checkpoint folder (no {PROGRESS}); pass "
            f"<output_dir>/checkpoints/step_<N> or 'latest'"
        )
    return path


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore the state saved by :func:`save_checkpoint`; returns its progress record."""
    accelerator.load_state(str(path))
    return json.loads((path / PROGRESS).read_text())
