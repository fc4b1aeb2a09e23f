"""``benchmarks/host_time.py`` times the Python of a fused step, not its kernels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from host_time import host_ms, main

from adabalance_hf.optim import _fused


def test_the_timed_steps_run_no_kernel_and_the_kernels_come_back() -> None:
    params = [torch.nn.Parameter(torch.randn(70, 30)), torch.nn.Parameter(torch.randn(300))]
    before = [p.detach().clone() for p in params]
    run_compiled = _fused.run_compiled
    times = host_ms(params, [torch.randn_like(p) for p in params], steps=3, amsbound=True)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert _fused.run_compiled is run_compiled


def test_the_json_record_has_a_row_per_set(tmp_path: Path) -> None:
    record = tmp_path / "host.json"
    assert main(["--sets", "bert-lora", "--steps", "2", "--json", str(record)]) == 0
    rows = json.loads(record.read_text())["rows"]
    assert [(r["set"], r["tensors"], len(r["times_ms"])) for r in rows] == [("bert-lora", 48, 2)]
