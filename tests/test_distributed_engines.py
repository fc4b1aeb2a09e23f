"""Every engine on 2 gloo processes reproduces the single-process, global-batch run.

Each test also checks how much optimizer state each rank holds: all of it where the engine
replicates it (DDP), about half where it shards it (ZeRO-1, FSDP2, DeepSpeed ZeRO-2/3).
"""

from __future__ import annotations

import pytest
from _dist_helpers import (
    assert_same_params,
    ddp_worker,
    deepspeed_worker,
    fsdp2_worker,
    needs_gloo,
    reference_run,
    requires_deepspeed,
    run_workers,
)

pytestmark = [needs_gloo, pytest.mark.slow]  # 2 spawned processes per run


@pytest.fixture(scope="module")
def reference() -> dict:
    return reference_run()


def assert_state_is_sharded(results: list[dict], reference: dict) -> None:
    """Each of the 2 ranks holds about half of the state, and together about all of it."""
    full = reference["state_bytes"]
    per_rank = [r["state_bytes"] for r in results]
    assert all(0.45 * full <= b <= 0.55 * full for b in per_rank), (per_rank, full)
    assert full <= sum(per_rank) <= 1.01 * full, (per_rank, full)


def test_ddp_matches_single_process_and_replicates_state(reference) -> None:
    results = run_workers(ddp_worker, "none")
    for result in results:
        assert result["optimizer_type"] == "AdaBalance"
        assert_same_params(result["params"], reference["params"])
        assert result["state_bytes"] == reference["state_bytes"]  # replicated, not sharded


def test_zero1_matches_single_process_and_shards_state(reference) -> None:
    results = run_workers(ddp_worker, "zero1")
    for result in results:
        assert result["optimizer_type"] == "ZeroRedundancyOptimizer"
        assert_same_params(result["params"], reference["params"])
    assert_state_is_sharded(results, reference)


@pytest.mark.parametrize(
    "path",
    [{"foreach": True}],
    ids=["foreach"],
)  # per-tensor on DTensors: test_optim_dtensor.py; fused on 2 ranks: test_distributed_checkpoint
def test_fsdp2_matches_single_process_and_shards_state(reference, path: dict) -> None:
    results = run_workers(fsdp2_worker, path, timeout=180)
    for result in results:
        assert result["dtensor_state"], "FSDP2 state must be DTensors"
        assert result["n_states"] == len(reference["params"])
        assert_same_params(result["params"], reference["params"])
    assert_state_is_sharded(results, reference)


@requires_deepspeed
@pytest.mark.parametrize("stage", [2, 3], ids=["zero2", "zero3"])
def test_deepspeed_matches_single_process_and_shards_state(reference, stage: int) -> None:
    results = run_workers(deepspeed_worker, stage, timeout=180)
    for result in results:
        assert result["inner_type"] == "AdaBalance"
        assert result["flat_1d"], "DeepSpeed hands the optimizer flat 1-D partitions"
        assert result["group_decay"] == [0.01, 0.0]  # the factory's groups survive flattening
        assert_same_params(result["params"], reference["params"])
    assert_state_is_sharded(results, reference)
