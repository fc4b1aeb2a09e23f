"""The GLUE data of ``benchmarks/name_defaults.py``'s tiny-BERT regression runs.

A GLUE task read from its TSV files as (text_a, text_b or None, float label) triples, a
deterministic WordPiece tokenizer built from the training sentences, the encoded train and dev
sets, and the regression metrics (MSE, Pearson and Spearman from scipy, and accuracy and F1 at a
0.5 threshold for 0/1 labels).
"""

from __future__ import annotations

import math
from pathlib import Path

# task -> (folder, first text column, second text column or None, label column, label map or
# None for a float score)
TASKS = {
    "stsb": ("STS-B", "sentence1", "sentence2", "score", None),
    "mrpc": ("MRPC", "#1 String", "#2 String", "Quality", {"0": 0.0, "1": 1.0}),
    "sst2": ("SST-2", "sentence", None, "label", {"0": 0.0, "1": 1.0}),
}


def read_tsv(path: Path) -> list[dict[str, str]]:
    """A GLUE TSV file as rows keyed by the header (BOM stripped, no quoting)."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        if not line.strip():
            continue
        cells = line.split("\t")
        rows.append(dict(zip(header, cells, strict=False)))
    return rows


def load_task(glue_dir: Path, task: str) -> tuple[list[tuple], list[tuple]]:
    """(text_a, text_b or None, label) triples of the train and dev splits."""
    folder, col_a, col_b, col_label, label_map = TASKS[task]
    splits = []
    for split in ("train", "dev"):
        path = glue_dir / folder / f"{split}.tsv"
        if not path.exists():
            raise SystemExit(
                f"{path} not found: the GLUE folder has "
                f"{sorted(p.name for p in glue_dir.iterdir())} (pass --glue_dir, or a task whose "
                f"files are there)"
            )
        triples = []
        for row in read_tsv(path):
            raw = row[col_label].strip()
            label = label_map[raw] if label_map else float(raw)
            triples.append((row[col_a], row[col_b] if col_b else None, label))
        splits.append(triples)
    return splits[0], splits[1]


def train_wordpiece(texts: list[str], vocab_size: int):
    """A lower-casing BERT WordPiece tokenizer built from ``texts``, with BERT's pair template.

    The vocabulary is chosen here, deterministically: the special tokens, every character seen
    (alone and as a ``##`` continuation), then the most frequent words (ties broken
    alphabetically) up to ``vocab_size``; other words are split into characters. ``tokenizers``'
    ``WordPieceTrainer`` is not used because its vocabulary changes from one process to the next
    (merge ties are broken in hash order), which made the same seed give different results.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab = specials + chars + ["##" + c for c in chars]
    known = set(vocab)
    words = sorted((w for w in counts if w not in known), key=lambda w: (-counts[w], w))
    vocab += words[: max(vocab_size - len(vocab), 0)]
    backend = Tokenizer(
        models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]")
    )
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def encode(tokenizer, triples: list[tuple], max_length: int) -> list[dict]:
    a = [t[0] for t in triples]
    b = [t[1] for t in triples] if triples[0][1] is not None else None
    encoded = tokenizer(a, b, truncation=True, max_length=max_length)
    return [
        {
            "input_ids": encoded["input_ids"][i],
            "token_type_ids": encoded["token_type_ids"][i],
            "attention_mask": encoded["attention_mask"][i],
            "labels": float(triples[i][2]),
        }
        for i in range(len(triples))
    ]


def regression_metrics(binary: bool):
    import numpy as np
    from scipy import stats

    def compute(eval_pred) -> dict:
        preds = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1)
        labels = np.asarray(eval_pred.label_ids, dtype=np.float64).reshape(-1)
        out = {
            "mse": float(np.mean((preds - labels) ** 2)),
            "pearson": float(stats.pearsonr(preds, labels)[0]) if preds.std() > 0 else math.nan,
            "spearman": float(stats.spearmanr(preds, labels)[0]) if preds.std() > 0 else math.nan,
            "pred_mean": float(preds.mean()),
            "pred_std": float(preds.std()),
        }
        if binary:
            hard, gold = preds >= 0.5, labels >= 0.5
            tp = float(np.sum(hard & gold))
            precision = tp / max(float(hard.sum()), 1.0)
            recall = tp / max(float(gold.sum()), 1.0)
            out["accuracy"] = float(np.mean(hard == gold))
            out["f1"] = 2 * precision * recall / (precision + recall) if tp else 0.0
        return out

    return compute


_GLUE_CACHE: dict = {}


def glue_data(args) -> tuple:
    """Tokenizer and encoded train/dev sets, built once per process (deterministic)."""
    key = (args.task, str(args.glue_dir), args.vocab_size, args.max_length)
    if key not in _GLUE_CACHE:
        train, dev = load_task(Path(args.glue_dir), args.task)
        texts = [t[0] for t in train] + [t[1] for t in train if t[1] is not None]
        tokenizer = train_wordpiece(texts, args.vocab_size)
        _GLUE_CACHE[key] = (
            tokenizer,
            encode(tokenizer, train, args.max_length),
            encode(tokenizer, dev, args.max_length),
            TASKS[args.task][4] is not None,
        )
    return _GLUE_CACHE[key]
