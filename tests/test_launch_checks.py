"""Launches that silently run another number of processes than requested stop with the fix.

Measured with accelerate 1.15 / transformers 5.24 on CPU: ``accelerate launch --config_file
recipes/configs/multi_cpu.yaml`` starts 2 processes with ``WORLD_SIZE=2``, ``RANK``/``LOCAL_RANK``
0 and 1; a ``TrainingArguments`` without ``use_cpu=True`` then joins a gloo group of 2 but counts
``world_size`` 1 (accelerate's ``distributed_type`` NO), so each process trains alone.
The spawned workers below get exactly that environment (tests/_dist_helpers.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from _dist_helpers import LAUNCH_VARS, free_port, needs_gloo, run_workers, tiny_bert
from _glue_fixtures import write_sentiment_tsvs

from adabalance_hf.distributed import (
    DistributedSetupError,
    DistributedSetupWarning,
    check_launch,
    check_trainer_launch,
    create_optimizer,
    launch_checks,
    launched_world_size,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="reproduces the launch on a machine without GPUs"
)


@pytest.fixture
def trainer_args(clean_env, tmp_path):
    """TrainingArguments of a single process (accelerate's state exists, as in a Trainer)."""
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")


# --- check_trainer_launch -------------------------------------------------------------------


def test_trainer_in_a_world_of_one_among_two_launched_raises_with_the_cpu_fix(
    trainer_args, clean_env
) -> None:
    clean_env.setattr(launch_checks, "_has_accelerator_device", lambda: False)
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "1")
    with pytest.raises(DistributedSetupError) as error:
        check_trainer_launch(trainer_args)
    message = str(error.value)
    assert "the launcher started 2 processes (WORLD_SIZE=2, this one RANK=1)" in message
    assert "TrainingArguments.world_size=1" in message
    assert "accelerate's state num_processes=1 (distributed_type=DistributedType.NO)" in message
    assert f"output_dir {trainer_args.output_dir}" in message
    assert "`--use_cpu true`" in message and "`TrainingArguments(use_cpu=True)`" in message
    assert isinstance(error.value, RuntimeError) and error.value.problems == [message]


def test_trainer_fix_on_a_gpu_machine_and_with_deepspeed(trainer_args, clean_env) -> None:
    clean_env.setattr(launch_checks, "_has_accelerator_device", lambda: True)
    clean_env.setenv("PMI_SIZE", "4")
    with pytest.raises(DistributedSetupError, match=r"4 processes \(PMI_SIZE=4\)") as error:
        check_trainer_launch(trainer_args)
    assert "give every process a GPU" in str(error.value)
    clean_env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(DistributedSetupError, match=r"PartialState\(backend='gloo'\)"):
        check_trainer_launch(trainer_args)


def test_trainer_under_the_simple_launcher_raises(trainer_args, clean_env) -> None:
    # what `accelerate launch --cpu --num_processes 2` gives its only process
    clean_env.setenv("ACCELERATE_USE_CPU", "True")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", "29500")
    with pytest.raises(DistributedSetupError) as error:
        check_trainer_launch(trainer_args)
    message = str(error.value)
    assert "runs ONE process" in message and "TrainingArguments.world_size=1" in message
    assert "multi_cpu.yaml" in message and "`--use_cpu true`" in message


def test_single_process_trainer_is_quiet(trainer_args) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_trainer_launch(trainer_args) is None


def _launch_worker(rank: int, world: int, use_cpu: bool, out: str) -> dict:
    """A Trainer's arguments, then the recipes' optimizer on the same accelerate state."""
    from transformers import TrainingArguments

    result = {"trainer": None, "recipe": None}
    args = TrainingArguments(output_dir=out, report_to="none", use_cpu=use_cpu)
    result["world_size"] = args.world_size
    try:
        check_trainer_launch(args)
    except DistributedSetupError as error:
        result["trainer"] = str(error)
    try:
        create_optimizer(tiny_bert(), lr=1e-3, check_setup="error")  # as recipes/glue.py does
    except DistributedSetupError as error:
        result["recipe"] = str(error)
    return result


@pytest.mark.slow
@needs_gloo
@cpu_only
def test_two_launched_processes_without_use_cpu_stop_the_trainer_and_the_recipes(tmp_path):
    results = run_workers(_launch_worker, False, str(tmp_path), init=False)
    for rank, result in enumerate(results):
        assert result["world_size"] == 1  # the trap: each process a world of one
        message = result["trainer"]
        assert f"2 processes (WORLD_SIZE=2, this one RANK={rank})" in message
        assert "torch.distributed process group of 2" in message  # accelerate joined them
        assert "`--use_cpu true`" in message
        # recipes/glue.py's create_optimizer: what Accelerator() without cpu=True gives it
        assert "accelerate's state counts num_processes=1" in result["recipe"]
        assert "Accelerator(cpu=True)" in result["recipe"]


@pytest.mark.slow
@needs_gloo
@cpu_only
def test_two_launched_processes_with_use_cpu_are_a_real_world(tmp_path) -> None:
    results = run_workers(_launch_worker, True, str(tmp_path), init=False)
    assert results == [{"world_size": 2, "trainer": None, "recipe": None}] * 2


# --- check_launch and create_optimizer's warnings -------------------------------------------


def _warned(action) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in caught if issubclass(w.category, DistributedSetupWarning)]


def test_consistent_single_process_launch_is_quiet(clean_env) -> None:
    assert _warned(lambda: create_optimizer(tiny_bert())) == []
    assert check_launch() == []


def test_announced_processes_without_a_process_group_warn(clean_env) -> None:
    clean_env.setenv("WORLD_SIZE", "2")
    messages = _warned(lambda: create_optimizer(tiny_bert()))
    assert len(messages) == 1
    assert "announced 2 processes" in messages[0] and "Accelerator(cpu=True)" in messages[0]


def test_accelerate_cpu_simple_launcher_with_several_processes_warns(clean_env) -> None:
    # What `accelerate launch --cpu --num_processes 2` gives its single process (accelerate 1.15).
    clean_env.setenv("ACCELERATE_USE_CPU", "True")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", "29500")
    messages = _warned(lambda: create_optimizer(tiny_bert()))
    assert len(messages) == 1 and "runs ONE process" in messages[0]


def test_fsdp_and_fp16_ignored_on_cpu_warn(clean_env) -> None:
    clean_env.setenv("ACCELERATE_USE_CPU", "True")
    clean_env.setenv("ACCELERATE_USE_FSDP", "true")
    clean_env.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    messages = _warned(lambda: create_optimizer(tiny_bert()))
    assert any("FSDP is silently ignored" in m for m in messages)
    assert any("ACCELERATE_MIXED_PRECISION=fp16 on CPU" in m for m in messages)
    assert _warned(lambda: create_optimizer(tiny_bert(), check_setup=False)) == []


def test_launched_world_size_reads_the_first_launcher_variable_set(clean_env) -> None:
    assert launched_world_size() is None
    clean_env.setenv("OMPI_COMM_WORLD_SIZE", "8")
    assert launched_world_size() == 8
    clean_env.setenv("WORLD_SIZE", "4")  # torchrun/accelerate's variable comes first
    assert launched_world_size() == 4
    clean_env.setenv("WORLD_SIZE", "four")  # not a count: the next variable is read
    assert launched_world_size() == 8


def test_fsdp_is_not_flagged_for_a_sharded_model_or_on_a_gpu_machine(clean_env) -> None:
    clean_env.setenv("ACCELERATE_USE_FSDP", "true")
    clean_env.setattr(launch_checks, "_accelerate_state", lambda: None)  # none created yet
    clean_env.setattr(launch_checks, "_has_accelerator_device", lambda: False)
    warned = _warned(check_launch)
    assert len(warned) == 1 and "FSDP is silently ignored" in warned[0]
    assert "no GPU" in warned[0] and "fully_shard" in warned[0]
    assert check_launch(sharded_model=True) == []  # fully_shard applied by hand: FSDP is real
    clean_env.setattr(launch_checks, "_has_accelerator_device", lambda: True)
    assert check_launch() == []  # before accelerate's state exists, a GPU machine may use FSDP


def test_fp16_is_flagged_only_on_cpu(clean_env) -> None:
    clean_env.setattr(launch_checks, "_accelerate_state", lambda: None)  # none created yet
    clean_env.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert check_launch() == []  # not on CPU as far as the environment tells
    clean_env.setenv("ACCELERATE_USE_CPU", "true")
    warned = _warned(check_launch)
    assert len(warned) == 1 and "ACCELERATE_MIXED_PRECISION=fp16 on CPU" in warned[0]
    assert "mixed_precision='bf16'" in warned[0]


# --- check_launch(action="error") and create_optimizer(check_setup="error") -------------------


def test_strict_check_raises_where_the_default_warns(clean_env) -> None:
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.warns(DistributedSetupWarning, match="announced 2 processes"):
        create_optimizer(tiny_bert())
    with pytest.raises(DistributedSetupError, match="announced 2 processes") as error:
        create_optimizer(tiny_bert(), check_setup="error")
    assert "Accelerator(cpu=True)" in str(error.value) and len(error.value.problems) == 1
    clean_env.setenv("ACCELERATE_USE_CPU", "true")
    clean_env.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(DistributedSetupError) as error:
        check_launch(action="error")
    assert len(error.value.problems) == 2 and "fp16 on CPU" in str(error.value)
    assert str(error.value).count("\n  * ") == 2


def test_strict_check_is_quiet_for_a_single_process(clean_env) -> None:
    assert check_launch(action="error") == []
    create_optimizer(tiny_bert(), check_setup="error")
    with pytest.raises(ValueError, match="check_setup"):
        create_optimizer(tiny_bert(), check_setup="raise")
    with pytest.raises(ValueError, match="action"):
        check_launch(action="raise")


# --- the recipes stop ----------------------------------------------------------------------


@pytest.mark.slow
@needs_gloo
def test_glue_recipe_stops_under_the_simple_launcher(tmp_path, tiny_glue_model) -> None:
    data = write_sentiment_tsvs(tmp_path / "SST-2", train=8, dev=4)
    model = tiny_glue_model()
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(RECIPES / "glue.py"),
        "--task_name", "sst2", "--data_dir", str(data), "--model_name_or_path", str(model),
        "--output_dir", str(out), "--num_train_epochs", "1", "--max_seq_length", "16",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    # the recipe stops as for any bad argument: one "glue.py: error: ..." line on stderr (which
    # the launcher passes on) and exit code 2, which the launcher reports before exiting non-zero
    assert done.returncode != 0, done.stdout[-2000:]
    assert "returned non-zero exit status 2" in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("glue.py: error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    error = errors[0]
    assert error.startswith("glue.py: error: adabalance_hf: `accelerate launch` started this")
    assert "simple launcher runs ONE process" in error  # what went wrong
    assert "`accelerate launch --config_file recipes/configs/multi_cpu.yaml`" in error  # the fix
    assert 'glue.py", line' not in done.stderr  # no traceback of the recipe's own
    assert "glue.py: error:" not in done.stdout
    # stopped before any data, model or checkpoint: nothing trained, nothing written
    assert "training examples" not in done.stdout and not out.exists()
