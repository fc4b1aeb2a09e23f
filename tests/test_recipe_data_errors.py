"""The recipes' data errors: each names the file, the line (and column) where the parser gives
none, and the fix, before any model is built. recipes/glue.py reads through ``datasets``' csv and
json loaders, whose own errors are passed on with the file's name. The data-loading functions are
called directly; the recipes' ``main`` shows what a user of recipes/glue.py and recipes/gpt2.py
sees: in this process, and again as a subprocess, as a user runs it (``slow``)."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))

from glue_data import TASKS, load_glue_data, read_examples  # noqa: E402

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


def test_missing_folder_and_missing_files_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--data_dir .*nope: no train\.tsv of GLUE SST-2"):
        load_glue_data("sst2", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"--data_dir .*: no train\.tsv of GLUE SST-2"):
        load_glue_data("sst2", str(tmp_path))
    (tmp_path / "train.tsv").write_text(SST2_HEADER + "a fine film\t1\n")
    with pytest.raises(FileNotFoundError, match=r"no dev\.tsv of GLUE SST-2"):
        load_glue_data("sst2", str(tmp_path))


BAD_TSVS = [
    ("empty", "sst2", "", r"train\.tsv: no examples \(one per line, below a header row\)"),
    ("blank_lines", "sst2", "\n\n", r"train\.tsv: no examples"),
    ("header_only", "sst2", SST2_HEADER, r"train\.tsv: no examples"),
    ("all_malformed", "sst2", SST2_HEADER + "no tab here\n", r"no examples \(every row is empty"),
    ("missing_column", "sst2", "sentence\tgold\nfine\t1\n",
     r"train\.tsv: no column\(s\) \['label'\]; it has \['sentence', 'gold'\]"),
    ("label_outside", "sst2", SST2_HEADER + "fine\t1\n\nbad\t2\n",
     r"train\.tsv line 4, column 'label': '2' is not one of \('0', '1'\); fix the row, or "
     r"check --task_name"),
    ("rte_label", "rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentails\n",
     r"line 2, column 'label': 'entails' is not one of \('entailment', "),
    ("stsb_score", "stsb", STSB_HEADER + "0\tx\ta\tb\t3.5\n1\tx\tc\td\thigh\n",
     r"train\.tsv line 3, column 'score': 'high' is not a number"),
    ("stsb_nan", "stsb", STSB_HEADER + "0\tx\ta\tb\tnan\n", r"line 2, .*'nan' is not a number"),
    ("cola_label", "cola", "gj04\t1\t\tGood .\ngj04\tyes\t\tBad .\n",
     r"train\.tsv line 2, column '1': 'yes' is not one of \('0', '1'\)"),
    ("not_utf8", "sst2", (SST2_HEADER + "caf\xe9\t1\n").encode("latin-1"),
     r"train\.tsv: not UTF-8 text \(line 2\); convert it"),
]  # fmt: skip


@pytest.mark.parametrize(("task", "train", "message"), [c[1:] for c in BAD_TSVS],
                         ids=[c[0] for c in BAD_TSVS])  # fmt: skip
def test_bad_glue_tsv_names_file_line_column_and_fix(tmp_path, task, train, message) -> None:
    folder_name = TASKS[task][0]
    dev = {"sst2": SST2_HEADER + "a fine film\t1\n", "stsb": STSB_HEADER + "0\tx\ta\tb\t1.0\n",
           "rte": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n",
           "cola": "gj04\t1\t\tGood .\n"}[task]  # fmt: skip
    folder = _glue_dir(tmp_path / folder_name, train, dev)
    with pytest.raises(ValueError, match=message):
        load_glue_data(task, str(folder))


def test_rows_too_short_are_skipped_and_counted_not_fatal(tmp_path) -> None:
    # Real GLUE files have a few (QQP): they are skipped, not an error; blank lines are not counted
    path = tmp_path / "train.tsv"
    path.write_text(SST2_HEADER + "fine\t1\nbroken row\n\ngood\t0\n")
    logged = []
    _, columns, labels, _ = TASKS["sst2"]
    data, _, _ = read_examples("--data_dir", path, labels, columns, "sst2", log=logged.append)
    assert data["label"] == [1, 0]
    assert logged == [f"{path}: skipped 1 row(s) with an empty label or text"]


# ---- CSV / JSON files (--train_file, --validation_file) ----------------------------------------


def _files(tmp_path: Path, train: str, dev: str, suffix: str = ".csv") -> tuple[str, str]:
    (tmp_path / f"train{suffix}").write_text(train)
    (tmp_path / f"dev{suffix}").write_text(dev)
    return str(tmp_path / f"train{suffix}"), str(tmp_path / f"dev{suffix}")


GOOD_CSV = "sentence,label\na fine film,1\na dull film,0\n"
GOOD_JSON = '{"sentence": "a fine film", "label": 1}\n{"sentence": "dull", "label": 0}\n'

BAD_FILES = [
    # (id, task, train, dev, suffix, error type, message): the file (and line) named, where the
    # datasets library names none; the library's own message where it is clear
    ("no_such_file", None, None, GOOD_CSV, ".csv", FileNotFoundError, r"train\.csv: no such file"),
    ("txt", None, "x", "x", ".txt", ValueError, r"--train_file .*train\.txt: no examples"),
    ("empty_csv", None, "", GOOD_CSV, ".csv", ValueError, r"train\.csv: no examples"),
    ("header_only", None, "sentence,label\n", GOOD_CSV, ".csv", ValueError, "no examples"),
    ("extra_field", None, "sentence,label\nfine,1\nfine, really,0\n", GOOD_CSV, ".csv",
     ValueError, r"train\.csv: Error tokenizing data\. C error: Expected 2 fields in line 3"),
    ("no_label", None, "sentence,score\nfine,1\n", GOOD_CSV, ".csv", ValueError,
     r"train\.csv: no column\(s\) \['label'\]; it has \['sentence', 'score'\]"),
    ("only_label", None, "label\n1\n", GOOD_CSV, ".csv", ValueError, "no text column"),
    ("bad_json", None, GOOD_JSON, '{"sentence": "a", "label": 1}\n{"sentence": "b" "label": 0}\n',
     ".json", ValueError, r"dev\.json: JSON parse error: Missing a comma .* in row 1"),
    ("json_list", None, '["a fine film", 1]\n', GOOD_JSON, ".jsonl", ValueError,
     r"train\.jsonl: no column\(s\) \['label'\]"),
    ("json_array", None, '[{"sentence": "a", "label": 1},\n {"sentence": "b" "label": 0}]',
     GOOD_JSON, ".json", ValueError, r"train\.json: .*position 50"),
    # read by the datasets library, then checked row by row
    ("task_label", "sst2", GOOD_CSV + "so so,3\n", GOOD_CSV, ".csv", ValueError,
     r"train\.csv line 4, column 'label': '3' is not one of \('0', '1'\)"),
    ("task_label_str", "rte", "sentence1,sentence2,label\na,b,entailment\nc,d,yes\n",
     "sentence1,sentence2,label\na,b,entailment\n", ".csv", ValueError,
     r"line 3, column 'label': 'yes' is not one of \('entailment', 'not_entailment'\)"),
    ("stsb_score", "stsb", "sentence1,sentence2,label\na,b,4.0\nc,d,high\n",
     "sentence1,sentence2,label\na,b,1.5\n", ".csv", ValueError, r"line 3, .*'high' is not"),
    ("dev_label_unseen", None, "sentence,label\na,pos\nb,neg\n", "sentence,label\nc,meh\n",
     ".csv", ValueError, r"dev\.csv line 2, column 'label': 'meh' is not one of \('neg', 'pos'\)"),
    ("dev_class_outside", None, GOOD_CSV, "sentence,label\nc,2\n", ".csv", ValueError,
     r"dev\.csv line 2, column 'label': '2' is not one of \('0', '1'\)"),
    ("dev_column", None, "sentence,extra,label\na,x,1\n", GOOD_CSV, ".csv", ValueError,
     r"dev\.csv: no column\(s\) \['extra'\]"),
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


def test_one_file_missing_and_rows_without_a_label(tmp_path) -> None:
    train, _ = _files(tmp_path, GOOD_CSV, GOOD_CSV)
    with pytest.raises(ValueError, match="pass both --train_file and --validation_file"):
        load_glue_data(None, train_file=train)
    # an empty label (CSV) or none (JSON): the row is skipped and counted, as in GLUE's TSVs
    (tmp_path / "gaps.csv").write_text("sentence,label\nfine,1\ndull,\nbad,0\n")
    (tmp_path / "gaps.json").write_text(GOOD_JSON + '{"sentence": "x"}\n')
    logged = []
    splits, labels, _ = load_glue_data(None, train_file=str(tmp_path / "gaps.csv"),
                                       validation_file=str(tmp_path / "gaps.json"),
                                       log=logged.append)  # fmt: skip
    assert splits["train"]["label"] == [1, 0] and splits["validation"]["label"] == [1, 0]
    assert labels == ("0", "1")
    assert logged == [f"{tmp_path / name}: skipped 1 row(s) with an empty label or text"
                      for name in ("gaps.csv", "gaps.json")]  # fmt: skip


def test_good_files_still_load(tmp_path) -> None:
    splits, labels, _ = load_glue_data("sst2", train_file=_files(tmp_path, GOOD_CSV, GOOD_CSV)[0],
                                       validation_file=str(tmp_path / "dev.csv"))  # fmt: skip
    assert splits["train"]["label"] == [1, 0] and labels == ("0", "1")
    train_json, _ = _files(tmp_path, GOOD_JSON, GOOD_JSON, ".json")
    splits, labels, _ = load_glue_data(None, train_file=train_json,
                                       validation_file=str(tmp_path / "dev.csv"))  # fmt: skip
    assert labels == ("0", "1") and splits["train"][0]["sentence1"] == "a fine film"
    assert splits["validation"]["label"] == [1, 0]  # CSV beside JSON


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


# ---- what a user sees: the recipes' main, in this process and as subprocesses -------------------


class Done:
    """A recipe run's exit code and stderr."""

    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture(params=["in_process", pytest.param("subprocess", marks=pytest.mark.slow)])
def run_recipe(request, capsys, fresh_accelerate):
    """``run(script, *args) -> Done``: the recipe's ``main(args)`` in this process (an exception
    other than ``SystemExit`` fails the test: it would be a traceback), or the script as a
    subprocess, as a user runs it."""

    def run(script: str, *args: str) -> Done:
        if request.param == "subprocess":
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run(
                [sys.executable, str(RECIPES / script), *args],
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            return Done(done.returncode, done.stderr)
        recipe = importlib.import_module(script.removesuffix(".py"))
        capsys.readouterr()
        try:
            code = recipe.main(list(args))
        except SystemExit as stop:
            code = stop.code
        fresh_accelerate()
        return Done(code if isinstance(code, int) else 0, capsys.readouterr().err)

    return run


def _error_line(done: Done, prog: str) -> str:
    """The one ``prog: error: ...`` line a failed run ends with: no traceback, exit code 2."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr
    return errors[0]


def test_glue_recipe_stops_on_a_bad_label_before_building_a_model(tmp_path, run_recipe) -> None:
    folder = _glue_dir(tmp_path / "SST-2", SST2_HEADER + "fine\t1\nbad\tpositive\n")
    done = run_recipe("glue.py", "--task_name", "sst2", "--data_dir", str(folder),
                      "--model_name_or_path", str(tmp_path / "no-model"),
                      "--output_dir", str(tmp_path / "out"))  # fmt: skip
    last = _error_line(done, "glue.py")
    assert re.search(r"glue\.py: error: --data_dir .*train\.tsv line 3, column 'label': "
                     r"'positive' is not one of \('0', '1'\); fix the row", last)  # fmt: skip
    assert "no-model" not in done.stderr  # the model was never looked for
    assert not (tmp_path / "out" / "results.json").exists()


def test_gpt2_recipe_stops_on_a_missing_wikitext_file(tmp_path, run_recipe) -> None:
    valid = tmp_path / "wiki.valid.raw"
    valid.write_text("some text .\n")
    done = run_recipe("gpt2.py", "--train_file", str(tmp_path / "wikitext-2" / "wiki.train.raw"),
                      "--validation_file", str(valid), "--train_tokenizer",
                      "--output_dir", str(tmp_path / "out"), "--report_to", "none",
                      "--use_cpu")  # fmt: skip
    last = _error_line(done, "gpt2.py")
    assert last.startswith("gpt2.py: error: --train_file ")
    assert "wiki.train.raw: no such file" in last
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_bad_optimizer_option_is_one_usage_line_and_one_error_line(tmp_path, run_recipe) -> None:
    # argparse's form, as for any other bad flag: "usage: ..." and "prog: error: <flag> <value>:
    # <fix>", exit code 2, no traceback (the option is checked before any data or model is read)
    glue = run_recipe("glue.py", "--task_name", "sst2", "--model_name_or_path", "x",
                      "--learning_rate=-1e-3")  # fmt: skip
    fix = "must lie in [0.0, inf)"
    assert _error_line(glue, "glue.py") == f"glue.py: error: --learning_rate -0.001: {fix}"
    assert glue.stderr.startswith("usage: glue.py [-h] ") and len(glue.stderr.splitlines()) == 2
    gpt2 = run_recipe(
        "gpt2.py", "--output_dir", str(tmp_path), "--use_cpu", "--learning_rate=-1e-3"
    )
    last = _error_line(gpt2, "gpt2.py")
    assert re.match(r"gpt2\.py: error: --learning_rate -0\.001\b.*must lie in \[0\.0, inf\)$", last)
    assert gpt2.stderr.startswith("usage: gpt2.py [-h] ") and len(gpt2.stderr.splitlines()) == 2
    assert not any(tmp_path.iterdir())
