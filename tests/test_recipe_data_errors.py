"""The recipes' data errors: each names the file, the line (and column) and the fix, before any
model is built. The data-loading functions are called directly; two subprocess runs show what a
user of recipes/glue.py and recipes/gpt2.py sees."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))

from _glue_data import TASKS, load_glue_data, read_glue_tsv  # noqa: E402

SST2_HEADER = "sentence\tlabel\n"
STSB_HEADER = "index\tgenre\tsentence1\tsentence2\tscore\n"


def _glue_dir(root: Path, train: str | bytes, dev: str = SST2_HEADER + "a fine film\t1\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if isinstance(train, bytes):
        (root / "train.tsv").write_bytes(train)
    else:
        (root / "train.tsv").write_text(train)
    (root / "dev.tsv").write_text(dev)
    return root


# ---- GLUE TSV folders (--data_dir) -------------------------------------------------------------


def test_missing_folder_and_missing_files_name_the_file_and_the_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--data_dir .*nope is not a folder; pass"):
        load_glue_data("sst2", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"missing train\.tsv of the GLUE SST-2 task"):
        load_glue_data("sst2", str(tmp_path))
    (tmp_path / "train.tsv").write_text(SST2_HEADER + "a fine film\t1\n")
    with pytest.raises(FileNotFoundError, match=r"missing dev\.tsv.*download the GLUE data"):
        load_glue_data("sst2", str(tmp_path))


BAD_TSVS = [
    ("empty", "sst2", "", r"train\.tsv: the file is empty; a GLUE SST-2 TSV .*download it"),
    ("blank_lines", "sst2", "\n\n", r"train\.tsv: the file is empty"),
    ("header_only", "sst2", SST2_HEADER, r"no examples: all 0 row\(s\)"),
    ("all_malformed", "sst2", SST2_HEADER + "no tab here\n", r"no examples: all 1 row\(s\)"),
    ("missing_column", "sst2", "sentence\tgold\nfine\t1\n",
     r"train\.tsv line 1: the header \['sentence', 'gold'\] lacks the column\(s\) \['label'\]"),
    ("label_outside", "sst2", SST2_HEADER + "fine\t1\n\nbad\t2\n",
     r"train\.tsv line 4, column 2 \('label'\): label '2' is not one of '0', '1' \(the GLUE "
     r"SST-2 labels\); fix the row, or check --task_name"),
    ("rte_label", "rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentails\n",
     r"line 2, column 4 \('label'\): label 'entails' is not one of 'entailment', "),
    ("stsb_score", "stsb", STSB_HEADER + "0\tx\ta\tb\t3.5\n1\tx\tc\td\thigh\n",
     r"train\.tsv line 3, column 5 \('score'\): score 'high' is not a number; GLUE STS-B"),
    ("stsb_nan", "stsb", STSB_HEADER + "0\tx\ta\tb\tnan\n", r"line 2, .*score 'nan' is not a"),
    ("cola_label", "cola", "gj04\t1\t\tGood .\ngj04\tyes\t\tBad .\n",
     r"train\.tsv line 2, column 2: label 'yes' is not one of '0', '1'"),
    ("not_utf8", "sst2", (SST2_HEADER + "caf\xe9\t1\n").encode("latin-1"),
     r"train\.tsv: not UTF-8 text \(line 2, byte 18"),
]  # fmt: skip


@pytest.mark.parametrize(("task", "train", "message"), [c[1:] for c in BAD_TSVS],
                         ids=[c[0] for c in BAD_TSVS])  # fmt: skip
def test_bad_glue_tsv_names_file_line_column_and_fix(tmp_path, task, train, message) -> None:
    spec = TASKS[task]
    dev = {"sst2": SST2_HEADER + "a fine film\t1\n", "stsb": STSB_HEADER + "0\tx\ta\tb\t1.0\n",
           "rte": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n",
           "cola": "gj04\t1\t\tGood .\n"}[task]  # fmt: skip
    folder = _glue_dir(tmp_path / spec.folder, train, dev)
    with pytest.raises(ValueError, match=message):
        load_glue_data(task, str(folder))


def test_rows_too_short_are_skipped_and_counted_not_fatal(tmp_path) -> None:
    # Real GLUE files have a few (QQP): they are skipped, not an error.
    path = tmp_path / "train.tsv"
    path.write_text(SST2_HEADER + "fine\t1\nbroken row\n\ngood\t0\n")
    examples, skipped = read_glue_tsv(path, TASKS["sst2"])
    assert [e.label for e in examples] == [1, 0] and skipped == 1


# ---- CSV / JSON files (--train_file, --validation_file) ----------------------------------------


def _files(tmp_path: Path, train: str, dev: str, suffix: str = ".csv") -> tuple[str, str]:
    (tmp_path / f"train{suffix}").write_text(train)
    (tmp_path / f"dev{suffix}").write_text(dev)
    return str(tmp_path / f"train{suffix}"), str(tmp_path / f"dev{suffix}")


GOOD_CSV = "sentence,label\na fine film,1\na dull film,0\n"
GOOD_JSON = '{"sentence": "a fine film", "label": 1}\n{"sentence": "dull", "label": 0}\n'

BAD_FILES = [
    # (id, task, train, dev, suffix, error type, message) -- checked before the datasets library
    ("no_such_file", None, None, GOOD_CSV, ".csv", FileNotFoundError, r"train\.csv: no such file"),
    ("txt", None, "x", "x", ".txt", ValueError, r"use a \.csv, \.json or \.jsonl file"),
    ("empty_csv", None, "", GOOD_CSV, ".csv", ValueError, r"train\.csv: the file is empty; a CSV"),
    ("header_only", None, "sentence,label\n", GOOD_CSV, ".csv", ValueError, "but no examples"),
    ("extra_field", None, "sentence,label\nfine,1\nfine, really,0\n", GOOD_CSV, ".csv",
     ValueError, r"train\.csv line 3: 3 field\(s\) but the header has 2 .*quote fields"),
    ("no_label", None, "sentence,score\nfine,1\n", GOOD_CSV, ".csv", ValueError,
     r"train\.csv: no 'label' column \(columns: sentence, score\)"),
    ("only_label", None, "label\n1\n", GOOD_CSV, ".csv", ValueError, "no text column"),
    ("bad_json", None, GOOD_JSON, '{"sentence": "a", "label": 1}\n{"sentence": "b" "label": 0}\n',
     ".json", ValueError, r"dev\.json line 2, column 18: malformed JSON \(Expecting ','"),
    ("json_list", None, '["a fine film", 1]\n', GOOD_JSON, ".jsonl", ValueError,
     r"train\.jsonl line 1: a JSON list, not an object"),
    ("json_no_label", None, GOOD_JSON + '{"sentence": "x"}\n', GOOD_JSON, ".json", ValueError,
     r"train\.json line 3: no 'label' field \(fields: \['sentence'\]\)"),
    ("json_array", None, '[{"sentence": "a", "label": 1},\n {"sentence": "b" "label": 0}]',
     GOOD_JSON, ".json", ValueError, r"train\.json line 2, column 19: malformed JSON"),
    # read by the datasets library, then checked row by row
    ("task_label", "sst2", GOOD_CSV + "so so,3\n", GOOD_CSV, ".csv", ValueError,
     r"train\.csv line 4, column 'label': label 3 is not a class of GLUE SST-2 \(0 to 1"),
    ("task_label_str", "rte", "sentence1,sentence2,label\na,b,entailment\nc,d,yes\n",
     "sentence1,sentence2,label\na,b,entailment\n", ".csv", ValueError,
     r"line 3, column 'label': label 'yes' is not one of 'entailment', 'not_entailment'"),
    ("stsb_score", "stsb", "sentence1,sentence2,label\na,b,4.0\nc,d,high\n",
     "sentence1,sentence2,label\na,b,1.5\n", ".csv", ValueError, r"line 3, .*score 'high' is not"),
    ("empty_label", None, "sentence,label\nfine,1\ndull,\n", GOOD_CSV, ".csv", ValueError,
     r"train\.csv line 3, column 'label': the label is empty"),
    ("dev_label_unseen", None, "sentence,label\na,pos\nb,neg\n", "sentence,label\nc,meh\n",
     ".csv", ValueError, r"dev\.csv line 2, column 'label': label 'meh' never occurs"),
    ("dev_class_outside", None, GOOD_CSV, "sentence,label\nc,2\n", ".csv", ValueError,
     r"dev\.csv line 2, column 'label': label 2 is not a class of --train_file"),
    ("mixed_labels", None, GOOD_JSON + '{"sentence": "so so", "label": "pos"}\n', GOOD_JSON,
     ".json", ValueError, r"train\.json: the labels mix int and str values"),
    ("dev_column", None, "sentence,extra,label\na,x,1\n", GOOD_CSV, ".csv", ValueError,
     r"dev\.csv: lacks the column\(s\) \['extra'\]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("task", "train", "dev", "suffix", "error", "message"),
    [c[1:] for c in BAD_FILES],
    ids=[c[0] for c in BAD_FILES],
)
def test_bad_csv_or_json_names_file_line_and_fix(
    tmp_path, task, train, dev, suffix, error, message
) -> None:
    train_file, dev_file = _files(tmp_path, train or "", dev, suffix)
    if train is None:
        os.remove(train_file)
    with pytest.raises(error, match=message):
        load_glue_data(task, train_file=train_file, validation_file=dev_file)


def test_one_file_missing_or_mixed_formats(tmp_path) -> None:
    train, _ = _files(tmp_path, GOOD_CSV, GOOD_CSV)
    with pytest.raises(ValueError, match="--validation_file is missing: --train_file needs it"):
        load_glue_data(None, train_file=train)
    (tmp_path / "dev.json").write_text(GOOD_JSON)
    with pytest.raises(ValueError, match="give both as CSV or both as JSON"):
        load_glue_data(None, train_file=train, validation_file=str(tmp_path / "dev.json"))


def test_good_files_still_load(tmp_path) -> None:
    data = load_glue_data("sst2", train_file=_files(tmp_path, GOOD_CSV, GOOD_CSV)[0],
                          validation_file=str(tmp_path / "dev.csv"))  # fmt: skip
    assert [e.label for e in data.train] == [1, 0] and data.num_labels == 2
    custom = load_glue_data(None, train_file=_files(tmp_path, GOOD_JSON, GOOD_JSON, ".json")[0],
                            validation_file=str(tmp_path / "dev.json"))  # fmt: skip
    assert custom.num_labels == 2 and custom.train[0].text_a == "a fine film"


# ---- recipes/gpt2.py: plain-text files ---------------------------------------------------------


def _texts(tmp_path, train, valid):
    from gpt2 import DataArguments, load_texts

    return load_texts(DataArguments(train_file=train, validation_file=valid))


def test_gpt2_text_files_name_the_file_and_the_fix(tmp_path) -> None:
    valid = tmp_path / "wiki.valid.raw"
    valid.write_text(" = Valkyria = \n some text .\n")
    with pytest.raises(FileNotFoundError, match=r"--train_file .*wiki\.train\.raw: no such file"):
        _texts(tmp_path, str(tmp_path / "wiki.train.raw"), str(valid))
    with pytest.raises(FileNotFoundError, match=r"is a folder; pass a plain-text file such as"):
        _texts(tmp_path, str(tmp_path), str(valid))
    with pytest.raises(FileNotFoundError, match="--validation_file is missing: pass both"):
        _texts(tmp_path, str(valid), None)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.txt: the file holds no text"):
        _texts(tmp_path, str(empty), str(valid))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("line one\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.txt: not UTF-8 text \(line 2"):
        _texts(tmp_path, str(valid), str(latin))
    train, dev, source = _texts(tmp_path, str(valid), str(valid))
    assert train == dev == [" = Valkyria = ", " some text ."] and source.startswith("files:")


# ---- what a user sees: the recipes as subprocesses ---------------------------------------------


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(RECIPES / script), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_glue_recipe_stops_on_a_bad_label_before_building_a_model(tmp_path) -> None:
    folder = _glue_dir(tmp_path / "SST-2", SST2_HEADER + "fine\t1\nbad\tpositive\n")
    done = _run("glue.py", "--task_name", "sst2", "--data_dir", str(folder),
                "--model_name_or_path", str(tmp_path / "no-model"),
                "--output_dir", str(tmp_path / "out"), "--cpu")  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert re.search(
        r"ValueError: .*train\.tsv line 3, column 2 \('label'\): label 'positive'", last
    )
    assert "no-model" not in done.stderr  # the model was never looked for
    assert not (tmp_path / "out" / "results.json").exists()


def test_gpt2_recipe_stops_on_a_missing_wikitext_file(tmp_path) -> None:
    valid = tmp_path / "wiki.valid.raw"
    valid.write_text("some text .\n")
    done = _run("gpt2.py", "--train_file", str(tmp_path / "wikitext-2" / "wiki.train.raw"),
                "--validation_file", str(valid), "--train_tokenizer",
                "--output_dir", str(tmp_path / "out"), "--report_to", "none",
                "--use_cpu")  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "FileNotFoundError: --train_file" in last and "wiki.train.raw: no such file" in last
    assert not (tmp_path / "out" / "results.json").exists()
