"""The GLUE data of recipes/glue.py: the tasks, reading their files, and their metrics.

``recipes/glue.py`` (the training script, laid out like transformers'
examples/pytorch/text-classification/run_glue_no_trainer.py) imports this module as ``from
glue_data import ...``: run as ``python recipes/glue.py`` or ``accelerate launch
recipes/glue.py``, the script's folder is on ``sys.path``. Copy the two files together (the
recipes/ folder). Here: :data:`TASKS` and :data:`HUB_COLUMNS` (the GLUE tasks, as TSVs and on the
Hub), :func:`load_glue_data` (a task from the Hub or a folder of TSVs, or custom CSV/JSON files),
:func:`read_examples` (one file, through ``datasets``' csv/json loaders) and
:func:`glue_metrics` (each task's GLUE metric). Errors name the flag, the file, the line and
the fix; nothing here imports torch or transformers.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

__all__ = ["HUB_COLUMNS", "TASKS", "glue_metrics", "load_glue_data", "read_examples"]

# task: GLUE folder, the TSVs' text and label columns (CoLA's TSVs have no header: numbers), the
# labels in the Hub's order (None: a similarity score), the metric reported.
BINARY, NLI = ("0", "1"), ("entailment", "not_entailment")
MNLI = ("entailment", "neutral", "contradiction")
TASKS = {
    "cola": ("CoLA", ("3", None, "1"), BINARY, "matthews_correlation"),
    "sst2": ("SST-2", ("sentence", None, "label"), BINARY, "accuracy"),
    "mrpc": ("MRPC", ("#1 String", "#2 String", "Quality"), BINARY, "f1"),
    "stsb": ("STS-B", ("sentence1", "sentence2", "score"), None, "pearson"),
    "qqp": ("QQP", ("question1", "question2", "is_duplicate"), BINARY, "f1"),
    "mnli": ("MNLI", ("sentence1", "sentence2", "gold_label"), MNLI, "accuracy"),
    "qnli": ("QNLI", ("question", "sentence", "label"), NLI, "accuracy"),
    "rte": ("RTE", ("sentence1", "sentence2", "label"), NLI, "accuracy"),
    "wnli": ("WNLI", ("sentence1", "sentence2", "label"), BINARY, "accuracy"),
}
# nyu-mll/glue's text columns where they differ from the TSVs'
HUB_COLUMNS = {
    "cola": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
}


def read_examples(
    flag: str,
    path: str | Path,
    labels: tuple[str, ...] | str | None,
    columns: tuple[str | None, ...] | None = None,
    task: str | None = None,
    log: Callable[[str], object] = print,
) -> tuple[datasets.Dataset, tuple[str, ...] | None, tuple[str | None, ...]]:
    """Read a data file through ``datasets``' csv/json loaders: ``(dataset, labels, columns)``.

    GLUE TSVs: quoting off (their quotes are not CSV quotes), CoLA's without a header. Rows
    lacking a label or text are skipped (QQP has some); errors name the line.

    Args:
        flag (str): the flag that named the file, for the error messages.
        path (str or Path): a ``.tsv``, ``.csv`` or ``.json``/``.jsonl`` file.
        labels (tuple, str or None): the class names (``label`` becomes an index into them),
            ``None`` for a score (a float) or ``"infer"`` for the file's own.
        columns (tuple, optional): the text columns and the label column (``None``: picked as
            run_glue_no_trainer.py picks them). Default: ``None``
        task (str, optional): the GLUE task (CoLA's TSVs have no header). Default: ``None``
        log (callable, optional): prints the count of skipped rows. Default: ``print``

    Returns:
        tuple: a dataset of ``sentence1`` (``sentence2``) and ``label``, the labels, the columns.
    """
    path, suffix = Path(path), Path(path).suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file; check the path")
    # "NA" stays text; blank lines stay rows (skipped below), so row i is line i + header + 1
    options = {"keep_default_na": False, "skip_blank_lines": False}
    if suffix == ".tsv":
        options.update(delimiter="\t", quoting=csv.QUOTE_NONE)
    if suffix == ".tsv" and task == "cola":
        options.update(header=None, column_names=["0", "1", "2", "3"])
    is_json = suffix.startswith(".json")
    loader, options = ("json", {}) if is_json else ("csv", options)
    try:
        data = datasets.load_dataset(loader, data_files=str(path), split="train", **options)
    except Exception as error:  # datasets wraps the parser's error, which names no file
        raw, detail = path.read_bytes(), error.__cause__ or error
        if raw.strip().count(b"\n") == 0:  # nothing, or a header alone
            detail = "no examples (one per line, below a header row)"
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:  # the parser's position is in its buffer, not the file
            line = raw[: bad.start].count(b"\n") + 1
            detail = f"not UTF-8 text (line {line}); convert it, e.g. iconv -f latin1 -t utf-8"
        raise ValueError(f"{flag} {path}: {detail}") from None
    names = [c for c in data.column_names if c not in ("label", "idx")]
    if columns is None and not names:
        raise ValueError(f"{flag} {path}: no text column besides 'label' ({data.column_names})")
    if columns is None:  # custom files: the text columns as run_glue_no_trainer.py picks them
        columns = ("sentence1", "sentence2") if "sentence2" in names else (*names[:2], None)[:2]
        columns = (*columns, "label")
    missing = [c for c in columns if c is not None and c not in data.column_names]
    if missing:  # a file of another task, or another format
        raise ValueError(f"{flag} {path}: no column(s) {missing}; it has {data.column_names}")
    table = data.to_dict()  # {column: list}
    if labels == "infer":  # custom files: float labels are scores, others class names
        values = {v for v in table["label"] if v not in (None, "")}
        labels = tuple(str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v)))
        is_float = getattr(data.features["label"], "dtype", "").startswith("float")
        labels = None if is_float else labels
    names = ("sentence1", "sentence2", "label")
    values = {k: table[c] for k, c in zip(names, columns, strict=True) if c}
    rows, skipped = {k: [] for k in values}, 0
    for i in range(len(data)):
        row = {k: "" if v[i] is None else str(v[i]) for k, v in values.items()}
        if not all(text.strip() for text in row.values()):
            skipped += any(text.strip() for text in row.values())  # not a blank line
            continue
        try:
            label = float(row["label"]) if labels is None else labels.index(row["label"].strip())
        except ValueError:  # not a number, or not one of the labels
            label = math.nan
        if not math.isfinite(label):
            header = suffix == ".csv" or task not in (None, "cola")
            where = f"record {i}" if is_json else f"line {i + header + 1}"
            problem = "is not a number" if labels is None else f"is not one of {labels}"
            raise ValueError(
                f"{flag} {path} {where}, column {columns[2]!r}: {row['label']!r} {problem}; "
                "fix the row, or check --task_name"
            )
        for k in values:
            rows[k].append(label if k == "label" else row[k])
    if skipped:
        log(f"{path}: skipped {skipped} row(s) with an empty label or text")
    if not rows["label"]:
        raise ValueError(f"{flag} {path}: no examples (every row is empty or lacks a field)")
    return datasets.Dataset.from_dict(rows), labels, columns


def load_glue_data(
    task: str | None,
    data_dir: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    log: Callable[[str], object] = print,
) -> tuple[dict[str, datasets.Dataset], tuple[str, ...] | None, str]:
    """Load a GLUE task (the Hub's or a folder of TSVs) or custom CSV/JSON files.

    Args:
        task (str, optional): a key of :data:`TASKS`; ``None`` for custom files.
        data_dir (str, optional): the task's GLUE folder. Default: ``None`` (the Hub)
        train_file (str, optional): a custom training file. Default: ``None``
        validation_file (str, optional): a custom validation file. Default: ``None``
        log (callable, optional): prints notes. Default: ``print``

    Returns:
        tuple: ``{split: Dataset}``, the labels (``None``: a regression) and the source.

    Raises:
        FileNotFoundError, ValueError: the message names the flag, the file, the line and the fix.
    """
    if train_file or validation_file:  # custom data (with a task's labels if one is given)
        if not (train_file and validation_file):
            raise ValueError("pass both --train_file and --validation_file (CSV or JSON files)")
        columns = (*HUB_COLUMNS.get(task, TASKS[task][1][:2]), "label") if task else None
        labels = TASKS[task][2] if task else "infer"
        train, labels, columns = read_examples("--train_file", train_file, labels, columns, log=log)
        dev, _, _ = read_examples("--validation_file", validation_file, labels, columns, log=log)
        return {"train": train, "validation": dev}, labels, "files"
    if task is None:
        raise ValueError("--task_name is required without --train_file/--validation_file")
    folder_name, columns, labels, _ = TASKS[task]
    dev = ["validation_matched", "validation_mismatched"] if task == "mnli" else ["validation"]
    if not data_dir:  # from the Hub
        raw = datasets.load_dataset("nyu-mll/glue", task)
        hub, ours = HUB_COLUMNS.get(task, columns[:2]), ("sentence1", "sentence2")
        names = {c: k for c, k in zip(hub, ours, strict=True) if c not in (k, None)}
        return {s: raw[s].rename_columns(names) for s in ["train", *dev]}, labels, "hub"
    files = {"train": "train.tsv", **{s: f"dev{s[10:]}.tsv" for s in dev}}  # dev_matched.tsv
    for name in files.values():
        if not Path(data_dir, name).is_file():
            raise FileNotFoundError(f"--data_dir {data_dir}: no {name} of GLUE {folder_name}")
    splits = {
        split: read_examples("--data_dir", Path(data_dir, name), labels, columns, task, log)[0]
        for split, name in files.items()
    }
    return splits, labels, f"tsv:{data_dir}"


def glue_metrics(task: str | None, predictions: Any, references: Any) -> dict[str, float]:
    """Return the task's GLUE metrics (scikit-learn, scipy).

    Args:
        task (str, optional): the GLUE task; ``None``: accuracy, or Pearson for float predictions.
        predictions (array-like): class indices, or scores for a regression.
        references (array-like): the labels.
    """
    predictions, references = np.asarray(predictions), np.asarray(references)
    if task == "stsb" or (task is None and predictions.dtype.kind == "f"):
        pearson, spearman = pearsonr(predictions, references), spearmanr(predictions, references)
        return {"pearson": float(pearson[0]), "spearmanr": float(spearman[0])}
    if task == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
    result = {"accuracy": float(accuracy_score(references, predictions))}
    if task in ("mrpc", "qqp"):
        result["f1"] = float(f1_score(references, predictions))
    return result
