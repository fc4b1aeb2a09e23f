"""GLUE task specifications and data loading for ``recipes/glue.py``.

Three sources, in this order of precedence:

1. ``--train_file``/``--validation_file``: CSV or JSON (lines) files with a ``label`` column and
   one or two text columns.
2. ``--data_dir`` (or ``$GLUE_DIR/<TASK>``): a folder in the original GLUE TSV format. The real
   files' quirks are handled: a UTF-8 byte-order mark (MRPC), no header row (CoLA), and quotes
   inside sentences that are not CSV-quoted (every TSV is read with quoting off).
3. The Hugging Face Hub (``nyu-mll/glue``).

Every source gives the same thing: lists of ``Example(text_a, text_b, label)`` with labels in the
Hub's encoding (class index, or a float for STS-B).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["TASKS", "Example", "GlueData", "TaskSpec", "load_glue_data", "read_glue_tsv"]


class Example(NamedTuple):
    text_a: str
    text_b: str | None
    label: int | float


@dataclass(frozen=True)
class TaskSpec:
    """How one GLUE task is stored and scored."""

    folder: str  # folder name in the GLUE distribution
    tsv_columns: tuple[Any, ...]  # (text_a, text_b or None, label): header names or indices
    hub_columns: tuple[str, str | None]
    labels: tuple[str, ...] | None  # TSV label strings in the Hub's order; None: regression
    metric: str  # primary metric reported
    dev_files: dict[str, str] = field(default_factory=lambda: {"validation": "dev.tsv"})
    has_header: bool = True

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


_NLI3 = ("entailment", "neutral", "contradiction")
_RTE = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("CoLA", (3, None, 1), ("sentence", None), ("0", "1"), "matthews_correlation",
                     has_header=False),
    "sst2": TaskSpec("SST-2", ("sentence", None, "label"), ("sentence", None), ("0", "1"),
                     "accuracy"),
    "mrpc": TaskSpec("MRPC", ("#1 String", "#2 String", "Quality"), ("sentence1", "sentence2"),
                     ("0", "1"), "f1"),
    "stsb": TaskSpec("STS-B", ("sentence1", "sentence2", "score"), ("sentence1", "sentence2"),
                     None, "pearson"),
    "qqp": TaskSpec("QQP", ("question1", "question2", "is_duplicate"),
                    ("question1", "question2"), ("0", "1"), "f1"),
    "mnli": TaskSpec("MNLI", ("sentence1", "sentence2", "gold_label"), ("premise", "hypothesis"),
                     _NLI3, "accuracy",
                     dev_files={"validation_matched": "dev_matched.tsv",
                                "validation_mismatched": "dev_mismatched.tsv"}),
    "qnli": TaskSpec("QNLI", ("question", "sentence", "label"), ("question", "sentence"), _RTE,
                     "accuracy"),
    "rte": TaskSpec("RTE", ("sentence1", "sentence2", "label"), ("sentence1", "sentence2"), _RTE,
                    "accuracy"),
    "wnli": TaskSpec("WNLI", ("sentence1", "sentence2", "label"), ("sentence1", "sentence2"),
                     ("0", "1"), "accuracy"),
}  # fmt: skip


def task_spec(name: str) -> TaskSpec:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(
            f"--task_name: unknown GLUE task {name!r}; choose one of {', '.join(TASKS)} "
            f"(or leave it out and pass --train_file/--validation_file)"
        )
    return TASKS[key]


@dataclass
class GlueData:
    train: list[Example]
    evals: dict[str, list[Example]]  # split name -> examples
    num_labels: int
    is_regression: bool
    source: str


def _label_value(raw: str, spec: TaskSpec, where: str) -> int | float:
    raw = raw.strip()
    if spec.labels is None:
        return float(raw)
    try:
        return spec.labels.index(raw)
    except ValueError:
        raise ValueError(f"{where}: label {raw!r} is not one of {spec.labels}") from None


def read_glue_tsv(path: str | os.PathLike, spec: TaskSpec) -> tuple[list[Example], int]:
    """Read one GLUE TSV file with quoting off; returns the examples and the skipped row count.

    A byte-order mark is dropped (``utf-8-sig``); a header row is used to find the columns, or,
    for header-less files (CoLA), the columns are indices. Rows too short for the columns
    (a few malformed rows exist in QQP) are skipped and counted.
    """
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lines = handle.read().split("\n")
    rows = [line.rstrip("\r").split("\t") for line in lines if line.strip()]
    if not rows:
        raise ValueError(f"{path} is empty")
    columns = list(spec.tsv_columns)
    if spec.has_header or not _looks_like_data(rows[0], spec):
        header = [name.strip() for name in rows.pop(0)]
        if spec.has_header:
            missing = [c for c in columns if c is not None and c not in header]
            if missing:
                raise ValueError(
                    f"{path}: header {header} lacks the column(s) {missing} of the GLUE "
                    f"{spec.folder} format; is --task_name right for this folder?"
                )
            columns = [None if c is None else header.index(c) for c in columns]
    index_a, index_b, index_label = columns
    examples, skipped = [], 0
    needed = max(i for i in columns if i is not None)
    for number, row in enumerate(rows, start=2 if spec.has_header else 1):
        if len(row) <= needed or not row[index_label].strip():
            skipped += 1
            continue
        label = _label_value(row[index_label], spec, f"{path} line {number}")
        text_b = None if index_b is None else row[index_b]
        examples.append(Example(row[index_a], text_b, label))
    return examples, skipped


def _looks_like_data(row: list[str], spec: TaskSpec) -> bool:
    """For header-less formats: is the first row data (label parses) or a header?"""
    index_label = spec.tsv_columns[2]
    try:
        _label_value(row[index_label], spec, "")
    except (ValueError, IndexError):
        return False
    return True


def _local_dir(task: str | None, data_dir: str | None) -> Path | None:
    if data_dir:
        return Path(data_dir)
    glue_dir = os.environ.get("GLUE_DIR")
    if task and glue_dir:
        candidate = Path(glue_dir) / task_spec(task).folder
        if candidate.is_dir():
            return candidate
    return None


def _load_tsv_dir(task: str, folder: Path, log) -> GlueData:
    spec = task_spec(task)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"--data_dir {folder} is not a folder; pass the folder holding the GLUE "
            f"{spec.folder} train.tsv and dev.tsv (or set $GLUE_DIR to their parent)"
        )
    files = {"train": "train.tsv", **spec.dev_files}
    loaded = {}
    for split, name in files.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"--data_dir {folder}: missing {name} of the GLUE {spec.folder} task; "
                f"download the GLUE data (e.g. with the original download_glue_data.py) or "
                f"leave --data_dir out to load nyu-mll/glue from the Hub"
            )
        loaded[split], skipped = read_glue_tsv(path, spec)
        if skipped:
            log(f"{path}: skipped {skipped} malformed row(s)")
    train = loaded.pop("train")
    return GlueData(train, loaded, spec.num_labels, spec.is_regression, f"tsv:{folder}")


def _from_records(records, text_a: str, text_b: str | None, spec: TaskSpec | None) -> list:
    examples = []
    for record in records:
        label = record["label"]
        if spec is not None and isinstance(label, str):
            label = _label_value(label, spec, "label")
        examples.append(
            Example(str(record[text_a]), None if text_b is None else str(record[text_b]), label)
        )
    return examples


def _load_files(task: str | None, train_file: str, validation_file: str) -> GlueData:
    import datasets

    for flag, path in (("--train_file", train_file), ("--validation_file", validation_file)):
        if not path:
            raise ValueError(
                f"{flag} is required when the other of --train_file/--validation_file is given"
            )
        if not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
        if Path(path).suffix.lower() not in (".csv", ".json", ".jsonl"):
            raise ValueError(f"{flag} {path}: use a .csv, .json or .jsonl file")
    extension = "csv" if train_file.lower().endswith(".csv") else "json"
    raw = datasets.load_dataset(
        extension, data_files={"train": train_file, "validation": validation_file}
    )
    names = [n for n in raw["train"].column_names if n not in ("label", "idx")]
    if "label" not in raw["train"].column_names:
        raise ValueError(f"--train_file {train_file}: needs a 'label' column, has {names}")
    spec = task_spec(task) if task else None
    if spec is not None and all(c in names for c in spec.hub_columns if c is not None):
        text_a, text_b = spec.hub_columns
    elif "sentence1" in names:
        text_a, text_b = "sentence1", "sentence2" if "sentence2" in names else None
    else:
        text_a, text_b = names[0], names[1] if len(names) > 1 else None
    train = _from_records(raw["train"], text_a, text_b, spec)
    dev = _from_records(raw["validation"], text_a, text_b, spec)
    if spec is not None:
        num_labels, regression = spec.num_labels, spec.is_regression
    elif isinstance(train[0].label, float) and not float(train[0].label).is_integer():
        num_labels, regression = 1, True
    else:
        label_set = sorted({e.label for e in train})
        if not all(isinstance(v, int) for v in label_set):  # string labels: index them
            index = {v: i for i, v in enumerate(label_set)}
            train = [e._replace(label=index[e.label]) for e in train]
            dev = [e._replace(label=index[e.label]) for e in dev]
        num_labels, regression = len(label_set), False
    return GlueData(train, {"validation": dev}, num_labels, regression, "files")


def _load_hub(task: str) -> GlueData:
    import datasets

    spec = task_spec(task)
    key = next(k for k, v in TASKS.items() if v is spec)
    try:
        raw = datasets.load_dataset("nyu-mll/glue", key)
    except Exception as error:
        raise RuntimeError(
            f"could not load nyu-mll/glue/{key} from the Hugging Face Hub ({error}); offline, "
            f"pass --data_dir with the GLUE {spec.folder} TSV files (or set $GLUE_DIR)"
        ) from error
    text_a, text_b = spec.hub_columns
    train = _from_records(raw["train"], text_a, text_b, None)
    evals = {
        split: _from_records(raw[split], text_a, text_b, None)
        for split in (spec.dev_files if key == "mnli" else ["validation"])
    }
    return GlueData(train, evals, spec.num_labels, spec.is_regression, "hub:nyu-mll/glue")


def load_glue_data(
    task: str | None,
    data_dir: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    log=print,
) -> GlueData:
    """Load a GLUE task (or a custom classification task) from files, a folder or the Hub."""
    if task:
        task_spec(task)  # unknown names fail first, whatever the source
    if train_file or validation_file:
        return _load_files(task, train_file or "", validation_file or "")
    if not task:
        raise ValueError(
            "--task_name is required unless --train_file and --validation_file are given "
            f"(tasks: {', '.join(TASKS)})"
        )
    folder = _local_dir(task, data_dir)
    if folder is not None:
        return _load_tsv_dir(task, folder, log)
    return _load_hub(task)
