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

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from _data_checks import check_table_file, read_text_file

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


def _check_dev_labels(dev: list, where: list[str], allowed, problem: str) -> None:
    """Raise naming the first dev row (``where[i]`` is its file and line) whose label is not in
    ``allowed``; ``problem`` says why, after the label."""
    for position, example in enumerate(dev):
        if example.label not in allowed:
            raise ValueError(
                f"{where[position]}, column 'label': label {example.label!r} {problem}; fix the row"
            )


def _label_value(raw: str, spec: TaskSpec, where: str) -> int | float:
    """The Hub encoding of a label string; ``where`` (file, line, column) prefixes the error."""
    raw = raw.strip()
    if spec.labels is None:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(
                f"{where}: score {raw!r} is not a number; GLUE {spec.folder} labels are "
                f"similarity scores (floats from 0 to 5): fix the row, or check --task_name"
            )
        return value
    if raw not in spec.labels:
        raise ValueError(
            f"{where}: label {raw!r} is not one of {', '.join(map(repr, spec.labels))} (the GLUE "
            f"{spec.folder} labels); fix the row, or check --task_name (is the file from "
            f"another task?)"
        )
    return spec.labels.index(raw)


def _record_label(label: object, spec: TaskSpec | None, where: str) -> int | float:
    """A label of a CSV/JSON record: a label string of the task, or its class index / score."""
    if label is None or (isinstance(label, float) and math.isnan(label)):
        raise ValueError(f"{where}: the label is empty; give every example a label")
    if spec is None:
        return label  # type: ignore[return-value]
    if isinstance(label, str):
        return _label_value(label, spec, where)
    if spec.is_regression:
        return _label_value(str(label), spec, where)
    if isinstance(label, bool) or label not in range(spec.num_labels):
        raise ValueError(
            f"{where}: label {label!r} is not a class of GLUE {spec.folder} (0 to "
            f"{spec.num_labels - 1}, or one of {', '.join(map(repr, spec.labels or ()))}); fix "
            f"the row, or check --task_name"
        )
    return int(label)  # type: ignore[call-overload]


def read_glue_tsv(path: str | os.PathLike, spec: TaskSpec) -> tuple[list[Example], int]:
    """Read one GLUE TSV file with quoting off; returns the examples and the skipped row count.

    A byte-order mark is dropped (``utf-8-sig``); a header row is used to find the columns, or,
    for header-less files (CoLA), the columns are indices. Rows too short for the columns
    (a few malformed rows exist in QQP) are skipped and counted.
    """
    path = Path(path)
    text = read_text_file("--data_dir", path, f"the GLUE {spec.folder} TSV file")
    # (line number, fields) of the non-blank lines: errors name the line in the file
    rows = [
        (number, line.rstrip("\r").split("\t"))
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]
    if not rows:
        raise ValueError(
            f"{path}: the file is empty; a GLUE {spec.folder} TSV holds one example per line"
            f"{' below a header row' if spec.has_header else ''}: download it again (e.g. with "
            f"download_glue_data.py) or fix --data_dir"
        )
    columns = list(spec.tsv_columns)
    names = [f"column {c + 1}" if isinstance(c, int) else None for c in columns]
    if spec.has_header or not _looks_like_data(rows[0][1], spec):
        header = [name.strip() for name in rows.pop(0)[1]]
        if spec.has_header:
            missing = [c for c in columns if c is not None and c not in header]
            if missing:
                raise ValueError(
                    f"{path} line 1: the header {header} lacks the column(s) {missing} of the "
                    f"GLUE {spec.folder} format; is --task_name right for this folder?"
                )
            columns = [None if c is None else header.index(c) for c in columns]
            names = [None if c is None else f"column {header.index(c) + 1} ({c!r})"
                     for c in spec.tsv_columns]  # fmt: skip
    index_a, index_b, index_label = columns
    examples, skipped = [], 0
    needed = max(i for i in columns if i is not None)
    for number, row in rows:
        if len(row) <= needed or not row[index_label].strip():
            skipped += 1
            continue
        label = _label_value(row[index_label], spec, f"{path} line {number}, {names[2]}")
        text_b = None if index_b is None else row[index_b]
        examples.append(Example(row[index_a], text_b, label))
    if not examples:
        raise ValueError(
            f"{path}: no examples: all {len(rows)} row(s) below the header are malformed (fewer "
            f"than {needed + 1} tab-separated fields, or an empty label); is this the GLUE "
            f"{spec.folder} file?"
        )
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


def _from_records(
    records, text_a: str, text_b: str | None, spec: TaskSpec | None, rows: list[str] | None = None
) -> list:
    """Examples of a Hub split, or of a local file whose records ``rows`` names (file, line).

    A local file's labels and texts are checked (the Hub's are known to be right).
    """
    examples = []
    for index, record in enumerate(records):
        label = record["label"]
        if rows is not None:
            label = _record_label(label, spec, f"{rows[index]}, column 'label'")
            for column in (text_a, text_b):
                if column is not None and record[column] is None:
                    raise ValueError(
                        f"{rows[index]}: no text in column {column!r}; fill it in or drop the row"
                    )
        examples.append(
            Example(str(record[text_a]), None if text_b is None else str(record[text_b]), label)
        )
    return examples


def _load_files(task: str | None, train_file: str, validation_file: str) -> GlueData:
    import datasets

    rows: dict[str, list[str]] = {}
    columns: dict[str, list[str]] = {}
    flags = {"train": "--train_file", "validation": "--validation_file"}
    files = {"train": train_file, "validation": validation_file}
    for split, path in files.items():
        if not path:
            other = flags["validation" if split == "train" else "train"]
            raise ValueError(
                f"{flags[split]} is missing: {other} needs it (pass both, as CSV or JSON files "
                f"with a 'label' column)"
            )
        columns[split], lines = check_table_file(flags[split], path)
        where = f"{flags[split]} {path}"
        rows[split] = [f"{where} line {n}" if n else f"{where} record {i}"
                       for i, n in enumerate(lines)]  # fmt: skip
    suffixes = {Path(path).suffix.lower() == ".csv" for path in files.values()}
    if len(suffixes) > 1:
        raise ValueError(
            f"--train_file {train_file} and --validation_file {validation_file}: give both as "
            f"CSV or both as JSON"
        )
    missing = [c for c in columns["train"] if c not in columns["validation"] and c != "idx"]
    if missing:
        raise ValueError(
            f"--validation_file {validation_file}: lacks the column(s) {missing} of "
            f"--train_file {train_file}; give both files the same columns"
        )
    extension = "csv" if train_file.lower().endswith(".csv") else "json"
    try:
        raw = datasets.load_dataset(extension, data_files=files)
    except Exception as error:
        raise ValueError(
            f"--train_file {train_file} / --validation_file {validation_file}: the datasets "
            f"library could not read them as {extension.upper()} ({type(error).__name__}: "
            f"{error}); check that both files have the same columns"
        ) from error
    names = [n for n in raw["train"].column_names if n not in ("label", "idx")]
    spec = task_spec(task) if task else None
    if spec is not None and all(c in names for c in spec.hub_columns if c is not None):
        text_a, text_b = spec.hub_columns
    elif "sentence1" in names:
        text_a, text_b = "sentence1", "sentence2" if "sentence2" in names else None
    else:
        text_a, text_b = names[0], names[1] if len(names) > 1 else None
    train = _from_records(raw["train"], text_a, text_b, spec, rows["train"])
    dev = _from_records(raw["validation"], text_a, text_b, spec, rows["validation"])
    if spec is not None:
        num_labels, regression = spec.num_labels, spec.is_regression
    elif isinstance(train[0].label, float) and not float(train[0].label).is_integer():
        num_labels, regression = 1, True
    else:
        kinds = {type(e.label).__name__ for e in train}
        if len(kinds) > 1:
            raise ValueError(
                f"--train_file {train_file}: the labels mix {' and '.join(sorted(kinds))} values; "
                f"use class indices 0, 1, ... or label strings throughout"
            )
        label_set = sorted({e.label for e in train})
        if not all(isinstance(v, int) for v in label_set):  # string labels: index them
            index = {v: i for i, v in enumerate(label_set)}
            _check_dev_labels(
                dev, rows["validation"], index,
                f"never occurs in --train_file {train_file} (labels: "
                f"{', '.join(map(repr, label_set))})",
            )  # fmt: skip
            train = [e._replace(label=index[e.label]) for e in train]
            dev = [e._replace(label=index[e.label]) for e in dev]
        else:  # class indices: 0 .. max, and the dev set's must be among them
            if label_set[0] < 0:
                raise ValueError(
                    f"--train_file {train_file}: label {label_set[0]} is negative; class labels "
                    f"are 0, 1, ... (or strings)"
                )
            label_set = list(range(label_set[-1] + 1))
            _check_dev_labels(
                dev, rows["validation"], set(label_set),
                f"is not a class of --train_file {train_file} (0 to {label_set[-1]})",
            )  # fmt: skip
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
