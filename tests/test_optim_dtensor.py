"""Every path steps DTensor parameters (as FSDP2 hands them) exactly like plain tensors."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from adabalance_hf import AdaBalance

tensor_api = pytest.importorskip("torch.distributed.tensor")


@pytest.fixture(scope="module")
def cpu_mesh(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    store = dist.FileStore(str(tmp_path_factory.mktemp("dist") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield torch.distributed.device_mesh.init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "path",
    [{"foreach": False}, {"foreach": True}, {"fused": True}],
    ids=["per_tensor", "foreach", "fused"],
)
@pytest.mark.parametrize(
    "options",
    [{}, {"amsbound": True, "weight_decay": 0.1, "maximize": True}],
    ids=["defaults", "amsbound_l2_maximize"],
)
def test_dtensor_params_step_like_plain_tensors(cpu_mesh, path: dict, options: dict) -> None:
    shard = [tensor_api.Shard(0)]
    torch.manual_seed(0)
    initial = [torch.randn(8, 4), torch.randn(6)]
    plain = [t.clone().requires_grad_() for t in initial]
    sharded = [
        torch.nn.Parameter(tensor_api.distribute_tensor(t.clone(), cpu_mesh, shard))
        for t in initial
    ]
    opt_plain = AdaBalance(plain, lr=1e-2, gamma=0.1, **options, **path)
    opt_sharded = AdaBalance(sharded, lr=1e-2, gamma=0.1, **options, **path)
    for _ in range(5):
        grads = [torch.randn_like(t) for t in initial]
        for param, grad in zip(plain, grads, strict=True):
            param.grad = grad.clone()
        for param, grad in zip(sharded, grads, strict=True):
            param.grad = tensor_api.distribute_tensor(grad.clone(), cpu_mesh, shard)
        opt_plain.step()
        opt_sharded.step()
    for a, b in zip(plain, sharded, strict=True):
        assert isinstance(opt_sharded.state[b]["exp_avg_lr"], tensor_api.DTensor)
        assert torch.equal(a.detach(), b.detach().full_tensor())
        assert torch.equal(
            opt_plain.state[a]["exp_avg_lr"], opt_sharded.state[b]["exp_avg_lr"].full_tensor()
        )
