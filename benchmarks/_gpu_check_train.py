"""Section ``gpt2_trainer`` of ``gpu_check.py``: a short bf16 GPT-2 run with AdaBalanceTrainer.

A GPT-2 built from a ``GPT2Config`` (no download), its parameters in bf16 (the optimizer keeps
fp32 master weights), trained by :class:`~adabalance_hf.AdaBalanceTrainer` with ``bf16=True``
under each optimizer name of ``RUNS`` for a few dozen steps. Data: the bytes of WikiText-2
(``--wikitext_dir``: ``train.txt``, else ``valid.txt``, else ``test.txt``; 256 tokens, no
tokenizer to train), else token sequences of a random Markov chain (learnable as text is: every
token has two successors, all among 32 frequent tokens, so a few steps learn the skewed unigram
and later ones the pairs). Checks: no loss, gradient norm or parameter is NaN or inf, and the mean
loss of the last 5 steps is below 90% of the first 5's.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from _gpu_check_core import Context, Recorder, finite
from torch.utils.data import Dataset

VOCAB = 256
#: optimizer name -> optim_args, on CUDA and on ``--device cpu --quick`` (no compile there).
RUNS = {
    "cuda": {"adabalance_fused": "", "adabalance_8bit": "", "adabalance_4bit": ""},
    "cpu": {"adabalance": "", "adabalance_8bit": "fused=false"},
}


class TokenBlocks(Dataset):
    """Rows ``{"input_ids", "labels"}`` of a ``(n, length)`` token tensor."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def wikitext_blocks(folder: Path, n: int, length: int) -> torch.Tensor | None:
    """``n`` blocks of ``length`` bytes of WikiText-2, or None if no file is there."""
    for name in ("train.txt", "valid.txt", "test.txt"):
        path = folder / name
        if path.is_file():
            data = path.read_bytes()[: n * length]
            if len(data) == n * length:
                return torch.tensor(list(data), dtype=torch.long).view(n, length)
    return None


#: The tokens the Markov chain moves between: a skewed unigram, as in text (a uniform one over
#: ``VOCAB`` left the loss of a dozen CPU steps within 10% of its start: nothing to learn early).
FREQUENT = 32


def markov_blocks(n: int, length: int) -> torch.Tensor:
    """``n`` sequences of a random Markov chain whose successors are ``FREQUENT`` tokens."""
    gen = torch.Generator().manual_seed(0)
    successors = torch.randint(0, FREQUENT, (VOCAB, 2), generator=gen)
    tokens = torch.empty(n, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, VOCAB, (n,), generator=gen)
    for position in range(1, length):
        choice = torch.randint(0, 2, (n,), generator=gen)
        tokens[:, position] = successors[tokens[:, position - 1], choice]
    return tokens


def train_once(ctx: Context, optim: str, optim_args: str, data: TokenBlocks, steps: int) -> dict:
    """One Trainer run; its losses, gradient norms and whether the parameters stayed finite."""
    from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, TrainingArguments

    from adabalance_hf import AdaBalanceTrainer

    size = ctx.pick(full=(256, 4, 4), quick=(256, 4, 4), cpu_quick=(64, 2, 2))
    torch.manual_seed(0)
    shape = dict(n_positions=data.tokens.shape[1], n_embd=size[0], n_layer=size[1], n_head=size[2])
    config = GPT2Config(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, **shape)
    model = GPT2LMHeadModel(config).to(torch.bfloat16)
    with tempfile.TemporaryDirectory(prefix="gpu-check-gpt2-") as out:
        args = TrainingArguments(
            output_dir=out,
            optim=optim,
            optim_args=optim_args or None,
            learning_rate=3e-3,
            max_steps=steps,
            per_device_train_batch_size=ctx.pick(full=16, quick=16, cpu_quick=4),
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            bf16=True,
            use_cpu=not ctx.cuda,
            seed=0,
        )
        trainer = AdaBalanceTrainer(model=model, args=args, train_dataset=data)
        trainer.remove_callback(PrinterCallback)  # the losses go into the report instead
        trainer.train()
    logs = trainer.state.log_history
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {
        "optimizer": f"{type(optimizer).__name__} {optim_args}".strip(),
        "losses": [log["loss"] for log in logs if "loss" in log],
        "grad_norms": [log["grad_norm"] for log in logs if "grad_norm" in log],
        "params_finite": finite([p.detach() for p in model.parameters()]),
        "param_dtype": str(next(model.parameters()).dtype),
    }


def gpt2_trainer(ctx: Context, rec: Recorder) -> None:
    """Each of ``RUNS`` for a few dozen steps: the loss falls, nothing is NaN."""
    steps = ctx.pick(full=40, quick=30, cpu_quick=12)
    length = ctx.pick(full=128, quick=128, cpu_quick=32)
    n = steps * ctx.pick(full=16, quick=16, cpu_quick=4)
    tokens = wikitext_blocks(ctx.wikitext_dir, n, length)
    source = f"WikiText-2 bytes from {ctx.wikitext_dir}"
    if tokens is None:
        tokens, source = markov_blocks(n, length), "random Markov chain (no WikiText-2 found)"
    rec.notes.append(f"data: {source}; {steps} steps of {tokens.shape[1]}-token sequences")
    for optim, optim_args in RUNS["cuda" if ctx.cuda else "cpu"].items():
        name = f"{optim} {optim_args}".strip()
        with rec.item(name) as go:
            if not go:
                continue
            out = train_once(ctx, optim, optim_args, TokenBlocks(tokens), steps)
            losses, norms = out["losses"], out["grad_norms"]
            first = sum(losses[:5]) / max(len(losses[:5]), 1)
            last = sum(losses[-5:]) / max(len(losses[-5:]), 1)
            numbers_ok = all(math.isfinite(x) for x in (*losses, *norms))
            rec.check(f"{name}: {len(losses)} losses logged", len(losses) == steps, len(losses))
            rec.check(f"{name}: losses, grad norms, params finite",
                      numbers_ok and out["params_finite"])  # fmt: skip
            rec.check(f"{name}: loss falls", last < 0.9 * first, last, f"< 0.9 x {first:.3f}")
            row: dict[str, Any] = {"run": name, "first_loss": losses[0] if losses else None}
            row.update(last5_mean=last, first5_mean=first, **out)
            rec.row("gpt2", row)
