"""Distributed checkpoints: save on 2 ranks, resume on 1 or 2, and match an uninterrupted run.

FSDP2 through ``torch.distributed.checkpoint`` (DCP) and ZeRO-1 through
``consolidate_state_dict`` + ``torch.save``. Resumed models start from another random
initialisation, so only a real load can reproduce the uninterrupted run.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _dist_helpers import (
    OPT_KWARGS,
    SAVE_AT,
    assert_same_params,
    batches,
    dcp_load,
    dcp_resume_worker,
    dcp_save_worker,
    full_params,
    needs_gloo,
    reference_run,
    run_workers,
    tiny_bert,
    train_steps,
    zero1_resume_worker,
    zero1_save_worker,
)

from adabalance_hf import create_optimizer
from adabalance_hf.distributed import optimizer_state_bytes

pytestmark = [needs_gloo, pytest.mark.slow]  # 2 spawned processes per run


@pytest.fixture(scope="module")
def reference() -> dict:
    return reference_run()


@pytest.fixture(scope="module")
def dcp_checkpoint(tmp_path_factory) -> tuple[str, list[dict]]:
    checkpoint = str(tmp_path_factory.mktemp("dcp") / "step3")
    return checkpoint, run_workers(dcp_save_worker, checkpoint, timeout=180)


def test_dcp_fsdp2_uninterrupted_run_matches_single_process(dcp_checkpoint, reference) -> None:
    _, uninterrupted = dcp_checkpoint
    for result in uninterrupted:
        assert_same_params(result["params"], reference["params"])


def test_dcp_fsdp2_checkpoint_resumes_in_one_process(dcp_checkpoint, reference) -> None:
    checkpoint, uninterrupted = dcp_checkpoint
    assert not dist.is_initialized()
    model = tiny_bert(seed=1)
    # lr as a 0-dim tensor: DCP's initialisation step then sets lr to tensor(0.)
    optimizer = create_optimizer(model, **{**OPT_KWARGS, "lr": torch.tensor(OPT_KWARGS["lr"])})
    dcp_load(model, optimizer, checkpoint)
    assert {float(s["step"]) for s in optimizer.state.values()} == {float(SAVE_AT)}
    assert optimizer_state_bytes(optimizer) == reference["state_bytes"]
    train_steps(model, optimizer, batches()[SAVE_AT:])
    assert_same_params(full_params(model), uninterrupted[0]["params"])
    assert_same_params(full_params(model), reference["params"])


@pytest.mark.parametrize("path", [{"fused": True}], ids=["fused"])
def test_dcp_fsdp2_checkpoint_resumes_on_two_ranks(dcp_checkpoint, path: dict) -> None:
    checkpoint, uninterrupted = dcp_checkpoint
    # saved with the foreach path, resumed with the fused one
    resumed = run_workers(dcp_resume_worker, checkpoint, path, timeout=180)
    for result in resumed:
        assert result["loaded_steps"] == {float(SAVE_AT)}
        assert_same_params(result["params"], uninterrupted[0]["params"])


def test_zero1_consolidated_checkpoint_resumes_on_two_ranks_and_in_one(tmp_path, reference):
    checkpoint = str(tmp_path / "zero1.pt")
    uninterrupted = run_workers(zero1_save_worker, checkpoint)
    assert_same_params(uninterrupted[0]["params"], reference["params"])

    resumed = run_workers(zero1_resume_worker, checkpoint)
    for result in resumed:
        assert_same_params(result["params"], uninterrupted[0]["params"])
    per_rank = [r["state_bytes"] for r in resumed]
    assert sum(per_rank) == reference["state_bytes"] and max(per_rank) < 0.6 * sum(per_rank)

    # the consolidated optimizer state dict is a plain AdaBalance one
    saved = torch.load(checkpoint, weights_only=True)
    model = tiny_bert(seed=1)
    model.load_state_dict(saved["model"])
    optimizer = create_optimizer(model, **OPT_KWARGS)
    optimizer.load_state_dict(saved["optim"])
    train_steps(model, optimizer, batches()[SAVE_AT:])
    assert_same_params(full_params(model), uninterrupted[0]["params"])
