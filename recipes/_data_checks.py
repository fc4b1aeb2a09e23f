"""Checks of the recipes' local data files, before any model is built.

Each check reads the file the way the recipe will and raises an error that names the file, the
line (and column where one applies) and the fix, instead of a parser's traceback at load time.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["check_table_file", "read_text_file"]


def read_text_file(flag: str, path: str | Path, what: str = "a text file") -> str:
    """Return the UTF-8 text of ``path`` (given as ``flag``), or raise a clear error.

    Raises:
        FileNotFoundError: ``path`` does not exist or is a folder.
        ValueError: the file is not UTF-8 text.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{flag} {path} is a folder; pass {what} inside it")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file; check the path (expected {what})")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{flag} {path}: not UTF-8 text (line {line}, byte {error.start}: "
            f"{data[error.start : error.start + 4]!r}); is it {what}? Convert it to UTF-8, e.g. "
            f"iconv -f latin1 -t utf-8"
        ) from None


def _check_csv(flag: str, path: Path, text: str) -> tuple[list[str], list[int]]:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or not any(name.strip() for name in header):
        raise ValueError(
            f"{flag} {path}: the file is empty; a CSV needs a header row (e.g. "
            f"'sentence,label') and one example per line"
        )
    header = [name.strip() for name in header]
    lines: list[int] = []
    try:
        for fields in reader:
            if not fields:
                continue
            lines.append(reader.line_num)
            if len(fields) != len(header):
                raise ValueError(
                    f"{flag} {path} line {reader.line_num}: {len(fields)} field(s) but the header "
                    f"has {len(header)} ({', '.join(header)}); quote fields that contain commas "
                    f'("a, b") and give every row a value for every column'
                )
    except csv.Error as error:
        raise ValueError(
            f"{flag} {path} line {reader.line_num}: malformed CSV ({error}); check its quotes"
        ) from None
    if not lines:
        raise ValueError(f"{flag} {path}: a header but no examples; add one example per line")
    return header, lines


def _json_records(flag: str, path: Path, text: str) -> list[tuple[int, object]]:
    """(line, record) pairs of a JSON-lines file or of a .json file holding one JSON array."""
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{flag} {path} line {error.lineno}, column {error.colno}: malformed JSON "
                f"({error.msg}); fix it, or write JSON lines (one object per line)"
            ) from None
        return [(0, record) for record in records]
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pairs.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{flag} {path} line {number}, column {error.colno}: malformed JSON "
                f"({error.msg}); write one JSON object per line, e.g. "
                f'{{"sentence": "a fine film", "label": 1}}'
            ) from None
    return pairs


def _check_json(flag: str, path: Path, text: str) -> tuple[list[str], list[int]]:
    pairs = _json_records(flag, path, text)
    if not pairs:
        raise ValueError(
            f"{flag} {path}: the file is empty; write one JSON object per line, e.g. "
            f'{{"sentence": "a fine film", "label": 1}}'
        )
    columns: list[str] = []
    for index, (number, record) in enumerate(pairs):
        where = f"line {number}" if number else f"record {index}"
        if not isinstance(record, dict):
            raise ValueError(
                f"{flag} {path} {where}: a JSON {type(record).__name__}, not an object; write "
                f'one object per line, e.g. {{"sentence": "a fine film", "label": 1}}'
            )
        if "label" not in record:
            raise ValueError(
                f"{flag} {path} {where}: no 'label' field (fields: {sorted(record)}); every "
                f"example needs one"
            )
        columns += [key for key in record if key not in columns]
    return columns, [number for number, _ in pairs]


def check_table_file(flag: str, path: str | Path) -> tuple[list[str], list[int]]:
    """Check a CSV or JSON(-lines) data file; return its columns and each example's line.

    The line of example ``i`` is where it ends in the file (0 for the records of a JSON array).

    Raises:
        FileNotFoundError: no such file (or a folder).
        ValueError: empty, not UTF-8, malformed (naming the line and, for JSON, the column), no
            ``label`` column, or another extension than .csv/.json/.jsonl.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".jsonl"):
        raise ValueError(f"{flag} {path}: use a .csv, .json or .jsonl file (got '{suffix}')")
    text = read_text_file(flag, path, "a .csv or .json file")
    check = _check_csv if suffix == ".csv" else _check_json
    columns, lines = check(flag, path, text)
    if "label" not in columns:
        raise ValueError(
            f"{flag} {path}: no 'label' column (columns: {', '.join(columns)}); name the label "
            f"column 'label'"
        )
    if not [c for c in columns if c not in ("label", "idx")]:
        raise ValueError(f"{flag} {path}: no text column besides 'label'; add the text column")
    return columns, lines
