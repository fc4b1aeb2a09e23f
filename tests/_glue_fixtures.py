"""A tiny SST-2-style sentiment set for the GLUE recipe tests (words a 1-layer BERT can learn)."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "good great fine nice bad awful poor dull the a film food was is very not".split()


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
