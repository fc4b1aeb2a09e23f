"""Learning-curve plot for the recipes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_learning_curve"]


def plot_learning_curve(
    path: str | Path,
    train_loss: list[tuple[int, float]],
    eval_points: list[tuple[int, float]],
    eval_name: str,
    title: str,
) -> None:
    """Training loss against optimizer step (left axis), the eval metric (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(7, 4))
    if train_loss:
        steps, losses = zip(*train_loss, strict=True)
        loss_axis.plot(steps, losses, color="tab:blue", label="training loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    if eval_points:
        metric_axis = loss_axis.twinx()
        steps, values = zip(*eval_points, strict=True)
        metric_axis.plot(steps, values, "o-", color="tab:red", label=eval_name)
        metric_axis.set_ylabel(eval_name, color="tab:red")
    loss_axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
