"""``benchmarks/gpu_check.py`` runs end to end on the CPU (``--device cpu --quick``): it can't rot.

The GPU run itself (``python benchmarks/gpu_check.py``) needs a CUDA device; here only its CPU
variant runs (a subprocess, as a user runs it: ``slow``), and the refusal to run the full check
without CUDA and a run out of time are checked through its ``main`` in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = {"parity", "bf16_master", "fp16_grad_scaler", "speed", "gpt2_trainer"}
sys.path.insert(0, str(SCRIPT.parent))


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def _main(*args: str) -> int:
    """``gpu_check.main(args)`` in this process, its thread count restored afterwards."""
    import gpu_check

    threads = torch.get_num_threads()
    try:
        return gpu_check.main(list(args))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_cpu_quick_run_passes_every_section(tmp_path: Path) -> None:
    # Without WikiText-2 (a user's clone has no ../shared): the fallback data must be learnable.
    none = str(tmp_path / "no-wikitext")
    args = ("--device", "cpu", "--quick", "--out_dir", str(tmp_path), "--wikitext_dir", none)
    proc = _run(*args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["sections"]) == SECTIONS
    assert report["passed"] is True
    for name, section in report["sections"].items():
        assert section["status"] == "pass", (name, section["error"])
        assert section["checks"], name
        bad = [c for c in section["checks"] if c["status"] not in ("pass", "skipped")]
        assert not bad, (name, bad)
    # Every path reached the oracle comparison, the compiled ones included.
    parity_runs = {row["run"] for row in report["sections"]["parity"]["tables"]["errors"]}
    paths = ("per_tensor", "foreach", "fused", "8bit_fused", "8bit_eager")
    assert parity_runs == {f"{path} defaults" for path in paths}
    speed = report["sections"]["speed"]["tables"]
    assert set(speed) == {"speed bert", "speed gpt2", "speed llama1b", "speed llama7b-lora"}
    for rows in speed.values():
        names = {row["row"] for row in rows}
        assert {"adamw_fused", "adabalance_fused", "adabalance8bit_fused"} <= names
        assert all(row["median_ms"] > 0 and row["state_bytes_per_param"] > 0 for row in rows)
    assert any(
        "random Markov chain" in note for note in report["sections"]["gpt2_trainer"]["notes"]
    )
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "all checks passed" in markdown
    assert all(f"## {name}: pass" in markdown for name in SECTIONS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_exits_at_once_with_a_message(tmp_path: Path, capsys) -> None:
    assert _main("--out_dir", str(tmp_path)) == 2
    stderr = capsys.readouterr().err
    assert "no CUDA device" in stderr
    assert "--device cpu --quick" in stderr
    assert not (tmp_path / "gpu_check.json").exists()
    assert _main("--device", "cpu", "--out_dir", str(tmp_path)) == 2
    assert "--quick" in capsys.readouterr().err


def test_a_section_out_of_time_fails_the_run(tmp_path: Path, capsys) -> None:
    args = ["--device", "cpu", "--quick", "--sections", "bf16_master", "--total_budget_s", "5"]
    assert _main(*args, "--out_dir", str(tmp_path)) == 1, capsys.readouterr()
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["passed"] is False
    assert report["sections"]["bf16_master"]["status"] == "timeout"
