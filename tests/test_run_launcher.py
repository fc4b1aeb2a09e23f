"""``adabalance-run`` and the registration at import, tried through client code we did not write.

A script shaped like transformers' examples (``tests/_example_script.py``: stock
``HfArgumentParser``, ``TrainingArguments`` and ``Trainer``), TRL's own ``trl sft`` command line
and the launchers (``accelerate launch`` with the shipped ``recipes/configs/multi_cpu.yaml``,
``torchrun``) run unmodified; the launcher must give every process they start the names, and
keep the target's argv, process, signals and exit code.

Every test starts processes that import transformers; two stay in the quick loop (``-m "not
slow"``): a stock script trained through the launcher (argv, exit code, the options reaching the
optimizer) and the cost and registration of ``import adabalance_hf`` in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _dist_helpers import free_port

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SCRIPT = TESTS / "_example_script.py"
LAUNCHER = [sys.executable, "-m", "adabalance_hf.run"]
TRAIN = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none"]
TRAIN += ["--use_cpu", "true", "--save_strategy", "no", "--disable_tqdm", "true"]


def _env(**extra: str) -> dict[str, str]:
    """The environment, with this interpreter's commands (a venv's) first on PATH."""
    env = {k: v for k, v in os.environ.items() if k != "ADABALANCE_HF_DEBUG"}
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PATH=path, **extra)
    return env


def _run(command: list[str], cwd: Path, timeout: int = 300, **env: str):
    return subprocess.run(
        command, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout
    )


def _report(out: Path, rank: int = 0) -> dict:
    return json.loads((out / f"report-{rank}.json").read_text())


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", code], cwd)


def test_import_is_cheap_and_registers_when_transformers_is_imported(tmp_path):
    done = _python(
        "import sys, adabalance_hf\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "from transformers import TrainingArguments\n"
        "args = TrainingArguments('o', optim='adabalancew_8bit', optim_args='block_size=64')\n"
        "assert 'transformers.trainer' not in sys.modules  # TrainingArguments alone stays light\n"
        "print(args.to_dict()['optim'])",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "adabalancew_8bit"


@pytest.mark.slow
def test_names_registered_when_transformers_was_imported_first(tmp_path):
    done = _python(
        "from transformers import Trainer, TrainingArguments\n"
        "import adabalance_hf\n"
        "args = TrainingArguments('o', optim='adabalance', optim_args='final_lr=0.3')\n"
        "cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)\n"
        "print(cls.__name__, kwargs['final_lr'], kwargs['beta3'])",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["AdaBalance", "0.3", "0.9"]


@pytest.mark.slow
def test_without_the_package_the_stock_script_refuses_the_name(tmp_path):
    """What the launcher fixes: argparse's `invalid choice` before anything trains."""
    done = _run(
        [sys.executable, str(SCRIPT), "--output_dir", "out", "--optim", "adabalance"], tmp_path
    )
    assert done.returncode == 2 and "invalid choice: 'adabalance'" in done.stderr


def test_a_stock_script_trains_with_the_name_and_keeps_argv_and_exit_code(tmp_path):
    argv = [str(SCRIPT), "--output_dir", "out", "--optim", "adabalancew"]
    argv += ["--optim_args", "final_lr=0.2,gamma=1e-3", "--weight_decay", "0.01", *TRAIN]
    done = _run([*LAUNCHER, *argv, "--exit_code", "3"], tmp_path)
    assert done.returncode == 3, done.stderr[-3000:]
    report = _report(tmp_path / "out")
    assert report["optimizer"] == "AdaBalance" and report["steps"] == 2
    assert report["defaults"]["final_lr"] == 0.2 and report["defaults"]["gamma"] == 1e-3
    assert report["defaults"]["beta3"] == 0.9  # the fine-tuning default optim_args left open
    assert report["defaults"]["decoupled_weight_decay"] is True
    assert report["decay"] == [0.01, 0.0]  # the Trainer's groups: no decay on biases and norms
    assert report["argv"] == [*argv[1:], "--exit_code", "3"]


@pytest.mark.slow
def test_module_form_and_console_script(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(SCRIPT, package / "train.py")
    launcher = shutil.which("adabalance-run", path=_env()["PATH"])
    assert launcher is not None, "the console script is not installed (pip install -e .)"
    argv = ["-m", "pkg.train", "--output_dir", "out", "--optim", "adabalance_8bit", *TRAIN]
    done = _run([launcher, *argv, "--optim_args", "block_size=64"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _report(tmp_path / "out")["optimizer"] == "AdaBalance8bit"


@pytest.mark.slow
@pytest.mark.parametrize("debug", [False, True])
def test_a_bad_option_is_one_short_error_naming_the_flag(tmp_path, debug):
    argv = [str(SCRIPT), "--output_dir", "out", "--optim", "adabalance"]
    done = _run(
        [*LAUNCHER, *argv, "--optim_args", "gamma=abc"],
        tmp_path,
        **({"ADABALANCE_HF_DEBUG": "1"} if debug else {}),
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert ("Traceback" in done.stderr) is debug
    if not debug:
        assert lines[-2].startswith("_example_script.py: error: --optim_args 'gamma=abc'")
        assert "not a finite float" in lines[-2] and "ADABALANCE_HF_DEBUG=1" in lines[-1]


@pytest.mark.slow
def test_signals_reach_the_target_which_is_the_launched_process(tmp_path):
    argv = [str(SCRIPT), "--output_dir", "out", "--optim", "adabalance", *TRAIN]
    process = subprocess.Popen(
        [*LAUNCHER, *argv, "--wait_for_signal", "true"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert "READY" in iter(lambda: process.stdout.readline().strip(), "")  # after any logs
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == -signal.SIGTERM
    finally:
        process.kill()
    assert _report(tmp_path / "out")["pid"] == process.pid  # exec: no wrapper process


@pytest.mark.slow
def test_a_sitecustomize_of_the_environment_still_runs(tmp_path):
    own = tmp_path / "own_site"
    own.mkdir()
    # A mark in the process itself: an environment variable would be inherited from the launcher.
    (own / "sitecustomize.py").write_text("import sys\nsys.own_sitecustomize_ran = True\n")
    code = "import sys; from transformers import TrainingArguments as T\n"
    code += "T('o', optim='adabalance'); print(getattr(sys, 'own_sitecustomize_ran', False))"
    (tmp_path / "check.py").write_text(code)
    done = _run([*LAUNCHER, "check.py"], tmp_path, PYTHONPATH=str(own))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the launch uses gloo on CPU")
@pytest.mark.parametrize("order", ["launcher_outside", "launcher_inside"])
def test_every_rank_of_a_two_process_launch_gets_the_names(tmp_path, order):
    """``adabalance-run torchrun ...`` and ``accelerate launch ... -m adabalance_hf.run``."""
    script = [str(SCRIPT), "--output_dir", "out", "--optim", "adabalancew", *TRAIN]
    if order == "launcher_outside":  # torchrun, as `python -m` so that it is this env's
        command = [*LAUNCHER, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        command += ["--master-port", str(free_port()), *script]
    else:
        config = REPO / "recipes" / "configs" / "multi_cpu.yaml"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        command += ["--main_process_port", str(free_port()), "-m", "adabalance_hf.run", *script]
    done = _run(command, tmp_path, timeout=600)
    reports = [_report(tmp_path / "out", rank) for rank in (0, 1)]  # written after training
    assert [r["optimizer"] for r in reports] == ["AdaBalance", "AdaBalance"], done.stderr[-4000:]
    assert [r["world_size"] for r in reports] == [2, 2] and [r["steps"] for r in reports] == [2, 2]
    if done.returncode != 0 and "terminate called without an active exception" in done.stderr:
        # Known, not yet understood: about 1 run in 8 here, a rank aborts at exit, after its work
        # (reports written), when the ranks run with the bootstrap under torch elastic; plain
        # torchrun did not in 30 runs. Anything else that fails the launch still fails the test.
        pytest.xfail("known abort at rank exit under the bootstrap (see the stop note)")
    assert done.returncode == 0, done.stderr[-4000:]
