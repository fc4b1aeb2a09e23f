"""accelerate: prepare() with gradient accumulation and clip_grad_norm_, the recipe configs, and
the launch pitfalls of accelerate 1.15 on CPU (detected by create_optimizer's launch checks).

Every run trains the same 5 steps of 16 samples, however many processes share them, and must
end with the parameters of a plain single-process loop (accelerate_reference).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _dist_accelerate import accelerate_reference, accelerate_worker
from _dist_helpers import (
    STEPS,
    assert_same_params,
    free_port,
    needs_gloo,
    requires_deepspeed,
    run_workers,
)

pytestmark = needs_gloo

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
SCRIPT = Path(__file__).resolve().parent / "_dist_accelerate.py"
GPU_ONLY = {"multi_gpu_ddp.yaml", "fsdp2.yaml"}
_LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP",
                "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_MIXED_PRECISION")  # fmt: skip


@pytest.fixture(scope="module")
def reference() -> dict:
    return accelerate_reference()


def launch(tmp_path: Path, *launch_args: str, flags: tuple[str, ...] = ()) -> tuple[list, str]:
    """``accelerate launch LAUNCH_ARGS tests/_dist_accelerate.py OUT FLAGS``; return the per-process
    results and the combined output."""
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(SCRIPT.parent))
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args]
    command += ["--main_process_port", str(free_port()), str(SCRIPT), str(out), *flags]
    # A session of its own, so that a hang is ended with the launcher's workers too.
    launcher = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = launcher.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        output, _ = launcher.communicate()
        pytest.fail(f"accelerate launch timed out after 150 s:\n{output[-4000:]}")
    results = [torch.load(path, weights_only=False) for path in sorted(out.glob("*.pt"))]
    if launcher.returncode != 0 and not flags:
        pytest.fail(f"accelerate launch failed ({launcher.returncode}):\n{output[-4000:]}")
    return sorted(results, key=lambda r: r["process_index"]), output


@pytest.mark.slow
def test_prepare_with_accumulation_and_clipping_matches_global_batch(reference) -> None:
    results = run_workers(accelerate_worker, True, init=False)
    assert [r["process_index"] for r in results] == [0, 1]
    for result in results:
        assert result["num_processes"] == 2
        assert result["distributed_type"] == "DistributedType.MULTI_CPU"
        assert result["optimizer_steps"] == STEPS
        assert result["setup_warnings"] == []
        assert_same_params(result["params"], reference["params"])


@pytest.mark.slow
def test_accelerator_without_cpu_true_trains_alone_and_is_detected(reference) -> None:
    # torchrun-style env with WORLD_SIZE=2, but Accelerator() without cpu=True on a CPU machine
    results = run_workers(accelerate_worker, False, init=False)
    for result in results:
        assert result["num_processes"] == 1  # the silent trap: each rank 0 of 1
        warned = result["setup_warnings"]
        assert any("accelerate's state counts num_processes=1" in w for w in warned)
        # Same samples, but each process did all the work.
        assert_same_params(result["params"], reference["params"])


def test_every_config_parses_and_gpu_only_ones_say_so() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == [
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
        "fsdp2.yaml",
        "multi_cpu.yaml",
        "multi_gpu_ddp.yaml",
        "single_process.yaml",
    ]
    for name in names:
        config = load_config_from_file(str(CONFIGS / name))
        assert config.num_processes == (1 if name == "single_process.yaml" else 2)
        assert ("GPU ONLY" in (CONFIGS / name).read_text()) == (name in GPU_ONLY)
    readme = (CONFIGS / "README.md").read_text()
    assert all(name in readme for name in names)


@pytest.mark.slow
def test_single_process_config(tmp_path, reference) -> None:
    (result,), _ = launch(tmp_path, "--config_file", str(CONFIGS / "single_process.yaml"))
    assert result["num_processes"] == 1 and result["setup_warnings"] == []
    assert_same_params(result["params"], reference["params"])


@pytest.mark.slow
def test_multi_cpu_config_starts_two_processes(tmp_path, reference) -> None:
    results, _ = launch(tmp_path, "--config_file", str(CONFIGS / "multi_cpu.yaml"))
    assert [r["num_processes"] for r in results] == [2, 2]
    assert [r["distributed_type"] for r in results] == ["DistributedType.MULTI_CPU"] * 2
    for result in results:
        assert result["setup_warnings"] == []
        assert_same_params(result["params"], reference["params"])


@pytest.mark.slow
def test_cpu_flag_with_two_processes_starts_one_and_is_detected(tmp_path, reference) -> None:
    results, _ = launch(tmp_path, "--cpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no")  # fmt: skip
    assert len(results) == 1  # accelerate 1.15: --cpu uses the simple launcher, one process
    (result,) = results
    assert result["num_processes"] == 1
    assert any("runs ONE process" in w for w in result["setup_warnings"])
    assert_same_params(result["params"], reference["params"])


@pytest.mark.slow
@requires_deepspeed
@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_config_with_gloo_state(tmp_path, reference, config: str) -> None:
    results, _ = launch(tmp_path, "--config_file", str(CONFIGS / config), flags=("deepspeed",))
    assert [r["num_processes"] for r in results] == [2, 2]
    for result in results:
        assert result["distributed_type"] == "DistributedType.DEEPSPEED"
        assert result["optimizer_steps"] == STEPS
        assert result["setup_warnings"] == []
        assert_same_params(result["params"], reference["params"])


@pytest.mark.slow
@requires_deepspeed
def test_deepspeed_without_gloo_state_counts_one_process_and_is_detected(tmp_path) -> None:
    config = str(CONFIGS / "deepspeed_zero2.yaml")
    results, output = launch(tmp_path, "--config_file", config, flags=("deepspeed", "no-gloo"))
    assert results == []  # DeepSpeed's batch-size check then fails: 16 != 8 * 2 * 2
    assert "DistributedSetupWarning" in output
    assert "accelerate's state counts num_processes=1" in output
