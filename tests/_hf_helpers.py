"""Tiny models, data and arguments for the transformers integration tests (no downloads).

Importing it imports ``adabalance_hf``, which registers the AdaBalance optimizer names with
transformers: the stock ``TrainingArguments(optim="adabalance")`` works in every test (and every
spawned worker) that uses these helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    TrainingArguments,
)

import adabalance_hf  # noqa: F401  (registers the optimizer names with transformers)

VOCAB = 100
SEQ = 8


def tiny_bert(
    seed: int = 0,
    *,
    vocab: int = VOCAB,
    hidden: int = 16,
    layers: int = 1,
    intermediate: int | None = None,
    max_positions: int = 32,
    dropout: float = 0.1,
    num_labels: int = 2,
) -> BertForSequenceClassification:
    """A BERT classifier built from a config: the one tiny BERT of the tests.

    Args:
        seed (int): the initialisation's seed.
        vocab (int): the vocabulary size.
        hidden (int): the width (2 attention heads).
        layers (int): the number of encoder layers.
        intermediate (int, optional): the feed-forward width. Default: twice ``hidden``.
        max_positions (int): the longest sequence.
        dropout (float): hidden and attention dropout (0 for a deterministic forward).
        num_labels (int): the classifier's outputs (1: regression).
    """
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=intermediate or 2 * hidden,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config)


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    return GPT2LMHeadModel(config)


class ListDataset(Dataset):
    def __init__(self, rows: list[dict[str, torch.Tensor]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.rows[index]


def classification_data(n: int = 32, seed: int = 1) -> ListDataset:
    """Label 1 when token 7 occurs: learnable, so the loss must fall."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(10, VOCAB, (SEQ,), generator=generator)
        label = int(torch.rand((), generator=generator) < 0.5)
        if label:
            ids[int(torch.randint(0, SEQ, (), generator=generator))] = 7
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": torch.tensor(label),
            }
        )
    return ListDataset(rows)


def lm_data(n: int = 32, seed: int = 2) -> ListDataset:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=generator)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return ListDataset(rows)


def args_kwargs(output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast, quiet, CPU-only, deterministic TrainingArguments."""
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        seed=123,
    )
    kwargs.update(overrides)
    return kwargs


def make_args(output_dir: Path, cls: type = TrainingArguments, **overrides: Any) -> Any:
    return cls(**args_kwargs(output_dir, **overrides))


def param_names(model: torch.nn.Module, params: list[torch.Tensor]) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def inner_optimizer(trainer: Any) -> torch.optim.Optimizer:
    """The optimizer under accelerate's wrapper."""
    optimizer = trainer.optimizer
    return getattr(optimizer, "optimizer", optimizer)
