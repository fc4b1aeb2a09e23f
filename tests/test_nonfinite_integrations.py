"""``skip_nonfinite_grads`` beyond one optimizer: the transformers integration (optim_args, a
Trainer run with one poisoned batch) and two gloo ranks that must skip together.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from _dist_helpers import needs_gloo, run_workers
from torch import nn

from adabalance_hf import AdaBalance

# transformers is imported inside the tests that use it: the two-rank test's spawned workers
# import this module, and importing transformers there would double their start-up time.

# ---- transformers: optim_args and a Trainer run with one poisoned batch ------------------------


def test_optim_args_parse_the_option_as_a_bool(tmp_path) -> None:
    from _hf_helpers import make_args
    from transformers import Trainer

    from adabalance_hf.integrations.transformers import OptimizerOptionError
    from adabalance_hf.optim_args import parse_optim_args

    assert parse_optim_args("skip_nonfinite_grads=true") == {"skip_nonfinite_grads": True}
    assert parse_optim_args("skip_nonfinite_grads=0") == {"skip_nonfinite_grads": False}
    args = make_args(tmp_path, optim="adabalance", optim_args="skip_nonfinite_grads=true")
    assert Trainer.get_optimizer_cls_and_kwargs(args)[1]["skip_nonfinite_grads"] is True
    with pytest.raises(OptimizerOptionError, match="--optim_args 'skip_nonfinite_grads=maybe'"):
        make_args(tmp_path, optim="adabalance", optim_args="skip_nonfinite_grads=maybe")
    with pytest.raises(OptimizerOptionError, match="skip_nonfinite_grads='maybe' is not a bool"):
        make_args(tmp_path, optim="adabalance_8bit", optim_args="skip_nonfinite_grads=maybe")


POISONED_STEP = 3  # the Trainer's global step (1-based) whose batch gives inf logits


def _train_with_a_poisoned_batch(tmp_path, optim_args: str | None):
    from _hf_helpers import classification_data, make_args, tiny_bert

    from adabalance_hf import AdaBalanceTrainer

    model = tiny_bert()
    calls = []

    def poison(module, inputs, output):
        calls.append(1)
        return output * math.inf if len(calls) == POISONED_STEP else None

    model.classifier.register_forward_hook(poison)
    args = make_args(tmp_path, optim="adabalance", optim_args=optim_args)
    trainer = AdaBalanceTrainer(model=model, args=args, train_dataset=classification_data())
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    return trainer, logs


def test_trainer_run_with_a_poisoned_batch_completes_and_reports_the_skip(tmp_path) -> None:
    trainer, logs = _train_with_a_poisoned_batch(tmp_path, "skip_nonfinite_grads=true")
    assert trainer.state.global_step == 6
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    counts = [e["adabalance/nonfinite_steps_skipped"] for e in logs]
    assert counts == [0, 0, 1, 1, 1, 1]
    optimizer = trainer.optimizer.optimizer  # under accelerate's wrapper
    assert isinstance(optimizer, AdaBalance)
    assert optimizer.nonfinite_steps_skipped == 1
    steps = {float(s["step"]) for s in optimizer.state.values()}
    assert steps == {5.0}  # six batches, one skipped


def test_trainer_run_without_the_option_ends_with_nan_weights(tmp_path) -> None:
    trainer, logs = _train_with_a_poisoned_batch(tmp_path, None)
    assert any(torch.isnan(p).any() for p in trainer.model.parameters())
    assert all("adabalance/nonfinite_steps_skipped" not in e for e in logs)


# ---- two ranks: the flag is all-reduced, so a rank with finite gradients skips too -------------


def _unchanged(before: list[torch.Tensor], params: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b.detach()) for a, b in zip(before, params, strict=True))


def skip_together_worker(rank: int, world: int) -> dict:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor, init_device_mesh

    result: dict = {}
    # 1. Plain data parallel without gradient averaging: only rank 1's gradient is bad.
    torch.manual_seed(0)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    optimizer = AdaBalance(params, lr=1e-2, skip_nonfinite_grads=True)
    before = [p.detach().clone() for p in params]
    for param in params:
        param.grad = torch.ones_like(param)
    if rank == 1:
        params[-1].grad[-1] = math.inf
    optimizer.step()
    result["plain"] = (_unchanged(before, params), len(optimizer.state))
    result["plain_count"] = optimizer.nonfinite_steps_skipped
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()
    result["plain_moved_after"] = not _unchanged(before, params)

    # 2. ZeRO-1: each rank steps only the parameters it owns; rank 1 poisons one of its own.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    zero = ZeroRedundancyOptimizer(
        model.parameters(), optimizer_class=AdaBalance, lr=1e-2, skip_nonfinite_grads=True
    )
    owned = [p for g in zero.optim.param_groups for p in g["params"]]
    result["owned"] = len(owned)
    before = [p.detach().clone() for p in model.parameters()]
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    if rank == 1:
        owned[-1].grad.view(-1)[-1] = math.nan
    zero.step()
    result["zero"] = _unchanged(before, list(model.parameters()))
    result["zero_count"] = zero.optim.nonfinite_steps_skipped

    # 3. DTensor (FSDP2-style) shards: the bad row lives on rank 1 only.
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    param = nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
    grad = torch.ones(4, 3)
    grad[-1, -1] = math.inf
    param.grad = distribute_tensor(grad, mesh, [Shard(0)])
    result["local_grad_finite"] = bool(torch.isfinite(param.grad.to_local()).all())
    optimizer = AdaBalance([param], lr=1e-2, foreach=True, skip_nonfinite_grads=True)
    local_before = param.detach().to_local().clone()
    optimizer.step()
    assert isinstance(param, DTensor)
    result["dtensor"] = torch.equal(param.detach().to_local(), local_before)
    result["dtensor_count"] = optimizer.nonfinite_steps_skipped
    return result


@pytest.mark.slow
@needs_gloo
def test_ranks_skip_together_when_only_one_rank_sees_the_bad_gradient() -> None:
    results = run_workers(skip_together_worker, timeout=120)
    assert [r["local_grad_finite"] for r in results] == [True, False]
    for rank, result in enumerate(results):
        assert result["plain"] == (True, 0), rank  # nothing changed, no state created
        assert result["plain_count"] == 1 and result["plain_moved_after"], rank
        assert result["owned"] > 0, rank  # rank 0 owns parameters whose gradients are finite
        assert result["zero"] and result["zero_count"] == 1, rank
        assert result["dtensor"] and result["dtensor_count"] == 1, rank
    assert not dist.is_initialized()
