"""A short training loop with AdaBalance, next to AdamW, on a small synthetic task (CPU, offline).

Trains the same small MLP twice on a noisy spiral classification problem, once with AdaBalance
and once with ``torch.optim.AdamW``, both under a cosine schedule, and prints the loss, the held-out
accuracy and AdaBalance's learning-rate bounds as training moves from Adam-like to SGD-like.

Usage::

    python recipes/quickstart.py [--steps 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from adabalance_hf import AdaBalance
from adabalance_hf.integrations.transformers import adabalance_diagnostics


def make_spirals(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved noisy spirals: a small problem that needs a non-linear model."""
    labels = torch.randint(0, 2, (count,), generator=generator)
    radius = torch.rand(count, generator=generator) * 3 + 0.3
    angle = radius * 2.5 + labels * math.pi
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return points + 0.15 * torch.randn(points.shape, generator=generator), labels


def train(optimizer_name: str, steps: int, seed: int) -> float:
    """Train the MLP with ``"adabalance"`` or ``"adamw"``; returns the held-out accuracy."""
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = make_spirals(2048, generator)
    test_x, test_y = make_spirals(1024, generator)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(2, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 2)
    )
    if optimizer_name == "adabalance":
        optimizer = AdaBalance(model.parameters(), lr=1e-2, final_lr=0.5, gamma=1e-2, beta3=0.99)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=1e-4)

    for step in range(1, steps + 1):
        batch = torch.randint(0, len(train_x), (128,), generator=generator)
        loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        step_lrs = [group["lr"] for group in optimizer.param_groups]  # before the schedule moves
        optimizer.step()
        scheduler.step()
        if step % (steps // 4) == 0:
            message = f"[{optimizer_name:>10}] step {step:4d}  loss {loss.item():.4f}"
            if isinstance(optimizer, AdaBalance):  # the bounds of the step just taken
                bounds = adabalance_diagnostics(optimizer, step_lrs)
                lower, upper = bounds["lower_bound"], bounds["upper_bound"]
                message += f"  lr bounds [{lower:.4f}, {upper:.4f}]"
            print(message, flush=True)

    with torch.no_grad():
        accuracy = (model(test_x).argmax(dim=1) == test_y).float().mean().item()
    print(f"[{optimizer_name:>10}] held-out accuracy {accuracy:.3f}", flush=True)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and model")
    args = parser.parse_args()
    if args.steps < 4:
        parser.error(f"--steps must be at least 4, got {args.steps}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = {name: train(name, args.steps, args.seed) for name in ("adabalance", "adamw")}
    print("held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
