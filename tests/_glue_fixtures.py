"""A tiny SST-2-style sentiment set and a tiny BERT folder for the GLUE recipe tests.

Plain functions (no pytest), so spawned processes can import them too; ``conftest.py`` wraps
them in session fixtures.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "good great fine nice bad awful poor dull the a film food was is very not".split()
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_sentiment_tsvs(folder: Path, train: int = 48, dev: int = 20) -> Path:
    """Write ``train.tsv`` and ``dev.tsv`` in the GLUE SST-2 format into ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for name, count in (("train", train), ("dev", dev)):
        rows = ["sentence\tlabel"]
        for i in range(count):
            label = i % 2
            word = WORDS[int(torch.randint(0, 4, (1,), generator=generator)) + 4 * (1 - label)]
            rows.append(f"the film was {'very ' * (i % 3)}{word} \t{label}")
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def save_tiny_glue_model(
    folder: Path, *, hidden: int = 16, layers: int = 1, dropout: float = 0.0, seed: int = 0
) -> Path:
    """Save a BERT classifier and a word-level tokenizer over :data:`WORDS` into ``folder``.

    Args:
        folder (Path): where ``from_pretrained`` will find both; created.
        hidden (int): the width (2 heads, intermediate size twice the width).
        layers (int): the number of encoder layers.
        dropout (float): hidden and attention dropout.
        seed (int): the initialisation's seed.
    """
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = [*SPECIAL_TOKENS, *WORDS]
    BertTokenizer(vocab={word: i for i, word in enumerate(words)}).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(words), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=32,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def reset_accelerate() -> None:
    """Reset accelerate's process-wide state (a singleton), as a fresh process has it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
