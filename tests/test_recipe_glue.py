"""recipes/glue.py end to end on a tiny BERT built from a config, and its data/metric helpers
(recipes/glue_data.py).

Checkpoints, interruption, resuming, non-finite steps and a missing matplotlib:
tests/test_recipe_glue_resume.py. Data errors: tests/test_recipe_data_errors.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))

from _glue_fixtures import reset_accelerate  # noqa: E402
from glue_data import TASKS, glue_metrics, load_glue_data, read_examples  # noqa: E402

from adabalance_hf.checkpoint import verify_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def setup(sentiment_data, tiny_glue_model):
    return {"data": sentiment_data, "model_nodrop": tiny_glue_model(dropout=0.0)}


def _args(setup, out: Path, *extra: str, model: str = "model_nodrop") -> list[str]:
    return [
        "--task_name", "sst2", "--data_dir", str(setup["data"]),
        "--model_name_or_path", str(setup[model]), "--output_dir", str(out),
        "--per_device_train_batch_size", "4", "--num_train_epochs", "2", "--max_seq_length", "16",
        "--logging_steps", "2", "--seed", "3", *extra,
    ]  # fmt: skip


def _run(argv: list[str]) -> int:
    import glue

    try:
        return glue.main(argv)
    finally:
        reset_accelerate()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# --- data and metrics ---------------------------------------------------------------------


def read_glue_tsv(path: Path, task: str) -> list[tuple]:
    """The (text_a, text_b, label) rows of one GLUE TSV file of ``task``, as the recipe reads it."""
    _, columns, labels, _ = TASKS[task]
    data = read_examples("--data_dir", path, labels, columns, task)[0].to_dict()
    return list(zip(data["sentence1"], data.get("sentence2", [None] * len(data["label"])),
                    data["label"], strict=True))  # fmt: skip


def test_tsv_quirks_bom_no_header_unquoted_quotes(tmp_path):
    mrpc = tmp_path / "mrpc.tsv"
    mrpc.write_bytes(
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t1\t2\tHe said " the witness " lied .\tThe "witness" lied, he said .\n'
        "0\t3\t4\tshort\n"  # malformed row: too few fields
        "0\t5\t6\tA cat .\tA dog .\n".encode()
    )
    logged = []
    _, columns, labels, _ = TASKS["mrpc"]
    read_examples("--data_dir", mrpc, labels, columns, "mrpc", log=logged.append)
    assert logged == [f"{mrpc}: skipped 1 row(s) with an empty label or text"]
    examples = read_glue_tsv(mrpc, "mrpc")
    assert examples[0] == ('He said " the witness " lied .', 'The "witness" lied, he said .', 1)
    assert examples[1] == ("A cat .", "A dog .", 0)

    cola = tmp_path / "cola.tsv"
    cola.write_text('gj04\t1\t\tThe sailors rode the breeze.\nxx\t0\t*\tRode "the" sailors.\n')
    examples = read_glue_tsv(cola, "cola")
    assert examples == [("The sailors rode the breeze.", None, 1), ('Rode "the" sailors.', None, 0)]

    rte = tmp_path / "rte.tsv"
    rte.write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tnot_entailment\n1\tC\tD\tentailment\n"
    )
    labels = [label for *_, label in read_glue_tsv(rte, "rte")]
    assert labels == [1, 0]  # the Hub's encoding: entailment 0, not_entailment 1


@pytest.mark.shared_data
def test_real_glue_files_parse_when_present():
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
    if not root.is_dir():
        pytest.skip("no ../shared/data/glue")
    # MRPC's train.tsv holds 3,667 rows below its header (the data README says 3,668)
    counts = {"SST-2": (67349, 872), "MRPC": (3667, 408), "RTE": (2490, 277), "CoLA": (8551, 1043)}
    for task, (train, dev) in counts.items():
        splits, _, _ = load_glue_data(task.lower().replace("-", ""), str(root / task))
        assert (len(splits["train"]), len(splits["validation"])) == (train, dev), task
    mrpc = load_glue_data("mrpc", str(root / "MRPC"))[0]["train"]
    assert mrpc[0]["sentence1"].startswith("Amrozi accused his brother")
    assert mrpc[0]["label"] == 1


def test_metrics_against_hand_computed_values():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    # tp=2 fp=1 fn=1 tn=1: precision 2/3, recall 2/3
    assert glue_metrics("mrpc", preds, labels) == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    mcc = (2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2)
    assert glue_metrics("cola", preds, labels) == pytest.approx({"matthews_correlation": mcc})
    assert glue_metrics("rte", preds, labels) == pytest.approx({"accuracy": 0.6})
    stsb = glue_metrics("stsb", [1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 4.0, 3.0])
    assert stsb["spearmanr"] == pytest.approx(0.8)  # ranks 1234 vs 1243: 1 - 6*2/(4*15)
    x, y = torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([1.0, 2.0, 4.0, 3.0])
    x, y = x - x.mean(), y - y.mean()
    assert stsb["pearson"] == pytest.approx(float((x @ y) / (x.norm() * y.norm())))


def test_bad_input_names_the_argument(setup, tmp_path, capsys):
    import glue

    with pytest.raises(SystemExit):
        glue.parse_args(["--task_name", "sst3", "--model_name_or_path", "x"])
    assert "--task_name: invalid choice: 'sst3'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        glue.parse_args(["--task_name", "rte", "--model_name_or_path", "x", "--optimizer", "sgdx"])
    assert "--optimizer: invalid choice: 'sgdx'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"--data_dir .*: no train\.tsv of GLUE RTE"):
        load_glue_data("rte", str(tmp_path))


def test_quickstart_arguments_and_bundled_data():
    import glue

    args = glue.parse_args([])
    assert args.quickstart and args.task_name == "sst2" and args.optimizer == "adabalance"
    splits, _, _ = load_glue_data(args.task_name, args.data_dir)
    train, dev = splits["train"], splits["validation"]
    labels = train["label"]
    assert len(train) >= 200 and len(dev) >= 60
    assert labels.count(0) == labels.count(1)
    assert not set(train["sentence1"]) & set(dev["sentence1"])


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(setup, tmp_path):
    # AdamW at 1e-2 learns this tiny task in 24 updates (with seed 4; not with every seed: 0, 1,
    # 5 to 9 stay at chance); 4 epochs of 6 updates of 8 examples
    extra = ("--optimizer", "adamw", "--learning_rate", "1e-2", "--num_train_epochs", "4",
             "--seed", "4")  # fmt: skip
    one = tmp_path / "one"
    accum = ("--gradient_accumulation_steps", "2")
    assert _run(_args(setup, one, *extra, *accum)) == 0
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(RECIPES / "glue.py"), *_args(setup, two, *extra),
        "--checkpointing_steps", "12", "--save_total_limit", "1",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results_one = json.loads((one / "results.json").read_text())
    results_two = json.loads((two / "results.json").read_text())
    assert results_two["num_processes"] == 2
    assert results_two["epochs"][-1]["step"] == results_one["epochs"][-1]["step"] == 24
    assert results_one["final_metrics"]["validation"]["accuracy"] == 1.0
    assert results_two["final_metrics"]["validation"] == pytest.approx(
        results_one["final_metrics"]["validation"]
    )
    for (step, loss), (step_ref, loss_ref) in zip(
        results_two["train_loss"], results_one["train_loss"], strict=True
    ):
        assert step == step_ref and loss == pytest.approx(loss_ref, rel=1e-4)
    weights_two = _weights(two)
    for name, tensor in _weights(one).items():
        if name.endswith("attention.self.key.bias"):
            continue  # its exact gradient is 0 (softmax shift): Adam amplifies rounding noise
        torch.testing.assert_close(weights_two[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # checkpoints written by two processes: staged, committed by the main one, rotated
    assert [p.name for p in (two / "checkpoints").iterdir()] == ["step_24"]
    assert verify_checkpoint(two / "checkpoints" / "step_24") == {"step": 24, "epochs_done": 3}
    files = {p.name for p in (two / "checkpoints" / "step_24").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "optimizer.bin", "progress.json"} < files


# --- --ignore_mismatched_sizes ------------------------------------------------------------


def test_a_two_label_head_for_one_or_three_labels_needs_ignore_mismatched_sizes(
    setup, tmp_path, capsys
):
    # the tiny BERT's checkpoint has a 2-label head; STS-B is a regression (1 label), and a
    # custom CSV with three classes needs 3
    stsb = tmp_path / "STS-B"
    stsb.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        rows = [f"{i}\tx\tthe film was good\tthe film was {w}\t{i % 5}.5" for i, w in
                enumerate(["good", "bad", "fine", "dull"] * 3)]  # fmt: skip
        (stsb / name).write_text("index\tgenre\tsentence1\tsentence2\tscore\n" + "\n".join(rows))
    three = tmp_path / "three.csv"
    three.write_text("sentence,label\n" + "".join(f"the film was {w},{w}\n" for w in
                                                 ["good", "bad", "dull"] * 4))  # fmt: skip
    data = {
        "stsb": ["--task_name", "stsb", "--data_dir", str(stsb)],
        "three": ["--train_file", str(three), "--validation_file", str(three)],
    }
    for name, args in data.items():
        argv = [*args, "--model_name_or_path", str(setup["model_nodrop"]), "--max_seq_length",
                "16", "--max_train_steps", "2", "--output_dir", str(tmp_path / name)]  # fmt: skip
        capsys.readouterr()
        assert _run(argv) == 2, name
        out = capsys.readouterr().err
        labels = 1 if name == "stsb" else 3
        head = f"has a classification head for another number of labels than this task's {labels}"
        assert head in out
        assert "pass --ignore_mismatched_sizes" in out
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())
        assert _run([*argv, "--ignore_mismatched_sizes"]) == 0, name
        results = json.loads((tmp_path / name / "results.json").read_text())
        weights = _weights(tmp_path / name)
        assert weights["classifier.weight"].shape == (labels, 16)
        metrics = results["final_metrics"]["validation"]
        assert set(metrics) == ({"pearson", "spearmanr"} if name == "stsb" else {"accuracy"})


# --- 8-bit state --------------------------------------------------------------------------


def test_the_8bit_names_train_with_8bit_state(setup, tiny_glue_model, tmp_path):
    # width 128: the embeddings and the dense weights are large enough for 8-bit state
    model = tiny_glue_model(hidden=128)
    out = tmp_path / "out"
    extra = ("--optimizer", "adabalancew_8bit", "--max_train_steps", "4",
             "--checkpointing_steps", "4")  # fmt: skip
    argv = _args({**setup, "wide": model}, out, *extra, model="wide")
    assert _run(argv) == 0
    state = torch.load(out / "checkpoints" / "step_4" / "optimizer.bin", weights_only=True)
    dtypes = [s["exp_avg"].dtype for s in state["state"].values()]
    assert torch.int8 in dtypes and torch.float32 in dtypes  # 8-bit, and small tensors fp32
    assert all("block_size" in group for group in state["param_groups"])
    assert json.loads((out / "results.json").read_text())["final_metrics"]
