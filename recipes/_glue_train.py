"""Pieces of the GLUE recipe's training loop: tokenising, the epoch sampler, evaluation, and
AdaBalance's skipping of steps with non-finite gradients."""

from __future__ import annotations

import torch
from _glue_metrics import glue_metrics

__all__ = ["EpochSampler", "enable_nonfinite_skipping", "evaluate", "nonfinite_skips", "tokenize"]


def tokenize(examples, tokenizer, max_length: int) -> list[dict]:
    texts_a = [e.text_a for e in examples]
    texts_b = None if examples[0].text_b is None else [e.text_b for e in examples]
    encoded = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
    return [
        {**{k: v[i] for k, v in encoded.items()}, "labels": e.label} for i, e in enumerate(examples)
    ]


class EpochSampler(torch.utils.data.Sampler):
    """A permutation that depends only on (seed, epoch): resuming mid-epoch sees the same order.

    Set the epoch through the prepared loader (``loader.set_epoch``): accelerate's loader calls
    ``set_epoch`` with its own epoch counter at the start of every pass, which a resumed run
    would otherwise start again at 0.
    """

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


def enable_nonfinite_skipping(optimizer: torch.optim.Optimizer) -> None:
    """Turn on AdaBalance's ``skip_nonfinite_grads`` in every param group.

    It is a per-group option of AdaBalance (on in any group, it covers the whole step): a step
    whose gradients hold inf or nan changes nothing and is counted in
    ``optimizer.nonfinite_steps_skipped``, which travels with the optimizer's state dict.
    """
    if not hasattr(optimizer, "nonfinite_steps_skipped"):
        raise RuntimeError(
            "--skip_nonfinite_grads: this adabalance_hf has no skip_nonfinite_grads option; "
            "update adabalance_hf"
        )
    for group in optimizer.param_groups:
        group["skip_nonfinite_grads"] = True


def nonfinite_skips(optimizer: torch.optim.Optimizer) -> int | None:
    """Steps skipped for non-finite gradients so far (``None``: no such option)."""
    count = getattr(optimizer, "nonfinite_steps_skipped", None)
    return None if count is None else int(count)
