"""Spawned workers and references for the low-bit distributed tests (gloo, 127.0.0.1).

Each reference and worker takes ``cls_name``, ``"AdaBalance8bit"`` (the default) or
``"AdaBalance4bit"``: the same engines and checks for both.

The model is a BERT of width 64 (vocab 128, intermediate 128): its embeddings, attention,
feed-forward and pooler weights have 4,096 or more elements and last dimensions of 64 or 128, so
about 96% of the elements get 8-bit state (the width-32 BERT of ``_dist_helpers`` would keep all
of it in fp32). Every run uses ``fused=False`` (the eager kernel: the same arithmetic, without a
``torch.compile`` per spawned process).

Two single-process references: :func:`reference_8bit` with ``world=1`` trains on the global batch
(what an engine should come close to); with ``world=2`` it averages the gradients of the ranks'
half batches as DDP and FSDP2 do (``g0 / 2 + g1 / 2``, exact for two ranks), so that a sharded
run whose state rounds as the unsharded one does must match it bitwise.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from _dist_helpers import (
    OPT_KWARGS,
    PER_RANK,
    STEPS,
    WORLD,
    batches,
    full_params,
    shard,
    tiny_bert,
)

VOCAB_8BIT = 128
SAVE_AT = 3
OPT_8BIT: dict[str, Any] = {**OPT_KWARGS, "fused": False}
CODE_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_lr")
CODE_DTYPES = {"exp_avg": torch.int8, "exp_avg_sq": torch.uint8, "exp_avg_lr": torch.uint8}
#: Per class: the dtypes of each state's codes and of its scales.
LOW_BIT = {
    "AdaBalance8bit": {key: (CODE_DTYPES[key], torch.float32) for key in CODE_KEYS},
    "AdaBalance4bit": {key: (torch.uint8, torch.uint8) for key in CODE_KEYS},
}


def bert_8bit(seed: int = 0) -> torch.nn.Module:
    """The tests' 2-layer BERT at width 64: large enough for 8-bit state."""
    return tiny_bert(seed, vocab=VOCAB_8BIT, hidden=64, intermediate=128)


def data_8bit(steps: int = STEPS) -> list[dict]:
    """``steps`` global batches whose token ids span the whole vocabulary."""
    return batches(steps, vocab=VOCAB_8BIT)


def optimizer_8bit(model: torch.nn.Module, cls_name: str = "AdaBalance8bit", **kwargs: Any) -> Any:
    """``create_optimizer(model, optimizer_class=<cls_name>, ...)`` with the tests' settings."""
    import adabalance_hf
    from adabalance_hf import create_optimizer

    optimizer_class = getattr(adabalance_hf, cls_name)
    return create_optimizer(model, optimizer_class=optimizer_class, **{**OPT_8BIT, **kwargs})


def elements(values: dict[str, torch.Tensor]) -> int:
    """The parameter's element count from its state (4-bit codes hold two elements a byte)."""
    codes = values["exp_avg"]
    scale = values.get("exp_avg_scale")
    packed = scale is not None and codes.dim() == scale.dim() + 1
    return codes.numel() * (2 if packed else 1)


def split_grad_steps(model: torch.nn.Module, optimizer: Any, data: list[dict], world: int) -> None:
    """Single-process steps on the gradient of ``world`` ranks: the mean of their half batches.

    Each rank's gradient is divided by ``world`` and the parts summed, as DDP does (FSDP2's
    average is the same for two ranks: halving is exact).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in data:
        parts = []
        for rank in range(world):
            model.zero_grad(set_to_none=True)
            model(**shard(batch, rank, world)).loss.backward()
            parts.append([p.grad / world for p in params])
        for param, *grads in zip(params, *parts, strict=True):
            param.grad = torch.stack(grads).sum(dim=0) if world > 1 else grads[0]
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def state_by_name(model: torch.nn.Module, optimizer: Any) -> dict[str, dict[str, Any]]:
    """This process's optimizer state keyed by parameter name, DTensors gathered whole.

    For each parameter: ``"kinds"`` (per key: whether a DTensor, its local dtype and, for
    DTensors, the placements), and full copies of the codes, scales and step. Gathering is a
    collective: every rank must call it (FSDP2 ranks all hold state for every parameter).
    """
    from torch.distributed.tensor import DTensor

    from adabalance_hf.distributed import local_optimizer

    inner = local_optimizer(optimizer)
    out: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        state = inner.state.get(param)
        if not state:
            continue
        kinds, values = {}, {}
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            is_dtensor = isinstance(value, DTensor)
            local = value.to_local() if is_dtensor else value
            placements = tuple(str(p) for p in value.placements) if is_dtensor else None
            kinds[key] = (is_dtensor, local.dtype, placements)
            values[key] = (value.full_tensor() if is_dtensor else value.detach()).clone()
        out[name.removeprefix("module.")] = {"kinds": kinds, "values": values}
    return out


def quantized_share(states: dict[str, dict[str, Any]]) -> float:
    """Share of the elements (of the parameters with state) whose state is low-bit codes."""
    total = quantized = 0
    for entry in states.values():
        values = entry["values"]
        numel = elements(values)
        total += numel
        if "exp_avg_scale" in values and not values["exp_avg"].is_floating_point():
            quantized += numel
    return quantized / total if total else 0.0


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run on one intra-op thread, as the spawned ranks do (``_dist_helpers._entry``).

    A matmul's reduction order follows the thread count: with another, the gradients (and so
    the parameters) differ from the ranks' in their last bits.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def reference_8bit(
    world: int = 1, steps: int = STEPS, cls_name: str = "AdaBalance8bit"
) -> dict[str, Any]:
    """One process, ``cls_name``: the global batch (``world=1``) or ``world`` ranks' mean."""
    with one_thread():
        model = bert_8bit()
        optimizer = optimizer_8bit(model, cls_name)
        split_grad_steps(model, optimizer, data_8bit(steps), world)
        return {"params": full_params(model), "state": state_by_name(model, optimizer)}


class OneRowModel(torch.nn.Module):
    """A weight of one row (4,096 elements: low-bit state) beside a 64 x 64 one. FSDP2 on 2 ranks
    shards dim 0, so rank 1 holds a shard of the first with no rows."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.row = torch.nn.Parameter(torch.randn(1, 4096, generator=gen) * 0.02)
        self.square = torch.nn.Parameter(torch.randn(64, 64, generator=gen) * 0.02)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x @ self.row.T).pow(2).sum() + (y @ self.square).pow(2).sum()


def one_row_run(model: torch.nn.Module, cls_name: str, steps: int = 4) -> Any:
    """``steps`` steps of ``cls_name`` (eager kernel) on the same inputs in every process, so
    FSDP2's averaged gradients equal one process's bitwise; returns the optimizer."""
    import adabalance_hf

    optimizer = getattr(adabalance_hf, cls_name)(model.parameters(), lr=1e-2, fused=False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 4096, generator=gen), torch.randn(8, 64, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        model(x, y).backward()
        optimizer.step()
    return optimizer


# ---------------------------------------------------------------------------------------------
# Workers: run_workers(fn, ...) calls fn(rank, world, ...)


def _train(model: torch.nn.Module, optimizer: Any, data: list[dict], rank: int, world: int):
    for batch in data:
        optimizer.zero_grad(set_to_none=True)
        model(**shard(batch, rank, world)).loss.backward()
        optimizer.step()


def zero1_8bit_worker(rank: int, world: int, cls_name: str) -> dict[str, Any]:
    """DDP + ZeroRedundancyOptimizer(``cls_name``): each rank steps whole tensors it owns."""
    from torch.nn.parallel import DistributedDataParallel

    from adabalance_hf.distributed import optimizer_state_bytes

    model = DistributedDataParallel(bert_8bit())
    optimizer = optimizer_8bit(model, cls_name, sharding="zero1")
    _train(model, optimizer, data_8bit(), rank, world)
    return {
        "optimizer_type": type(optimizer).__name__,
        "params": full_params(model),
        "state": state_by_name(model, optimizer),
        "state_bytes": optimizer_state_bytes(optimizer),
    }


def fsdp2_8bit_model(seed: int = 0) -> torch.nn.Module:
    """:func:`bert_8bit` with each encoder layer and the root under ``fully_shard`` (Shard(0))."""
    from torch.distributed.fsdp import fully_shard

    model = bert_8bit(seed)
    for layer in model.bert.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    return model


def fsdp2_8bit_dcp_worker(rank: int, world: int, checkpoint: str, cls_name: str) -> dict[str, Any]:
    """FSDP2 + ``cls_name``: SAVE_AT steps, ``dcp.save`` model and optimizer, finish STEPS."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    model = fsdp2_8bit_model()
    optimizer = optimizer_8bit(model, cls_name, sharding="fsdp2")
    data = data_8bit()
    _train(model, optimizer, data[:SAVE_AT], rank, world)
    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optimizer),
    }
    saved_kinds = {
        (name, key): (type(value).__name__, value.dtype)
        for name, param_state in state["optim"]["state"].items()
        for key, value in param_state.items()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    }
    dcp.save(state, checkpoint_id=checkpoint)
    at_save = {"params": full_params(model), "state": state_by_name(model, optimizer)}
    _train(model, optimizer, data[SAVE_AT:], rank, world)
    return {
        "params": full_params(model),
        "state": state_by_name(model, optimizer),
        "saved_kinds": saved_kinds,
        "at_save": at_save,
    }


def dcp_load_8bit(model: torch.nn.Module, optimizer: Any, checkpoint: str) -> None:
    """Load a DCP checkpoint through get/set_{model,optimizer}_state_dict (any world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optimizer),
    }
    dcp.load(state, checkpoint_id=checkpoint)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])


def fsdp2_one_row_worker(rank: int, world: int, cls_name: str) -> dict[str, Any]:
    """FSDP2 over :class:`OneRowModel`: steps, then each state decoded on this rank's shard."""
    from torch.distributed.fsdp import fully_shard

    from adabalance_hf.optim._blockwise_state import decoded_state

    model = OneRowModel()
    fully_shard(model)
    optimizer = one_row_run(model, cls_name)
    row_state = optimizer.state[model.row]
    return {
        "local_rows": model.row.to_local().shape[0],
        "decoded_shapes": [tuple(decoded_state(row_state, key).shape) for key in CODE_KEYS],
        "params": full_params(model),
        "state": state_by_name(model, optimizer),
    }


def deepspeed_8bit_worker(rank: int, world: int, cls_name: str) -> dict[str, Any]:
    """DeepSpeed ZeRO-2 with ``cls_name`` as the client optimizer, fp32, on CPU/gloo."""
    import deepspeed
    from _dist_helpers import skip_deepspeed_shm_build

    skip_deepspeed_shm_build()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    model = bert_8bit()
    optimizer = optimizer_8bit(model, cls_name)
    config = {
        "train_micro_batch_size_per_gpu": PER_RANK,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    engine, ds_optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=config
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in data_8bit():
            engine.backward(engine(**shard(batch, rank, world)).loss)
            engine.step()
    inner = ds_optimizer.optimizer
    states = [s for s in inner.state.values() if "exp_avg" in s]
    total = sum(elements(s) for s in states)
    quantized = sum(elements(s) for s in states if "exp_avg_scale" in s)
    return {
        "params": full_params(engine.module),
        "inner_type": type(inner).__name__,
        "shapes": [tuple(p.shape) for g in inner.param_groups for p in g["params"]],
        "quantized_share": quantized / total if total else 0.0,
        "warnings": [str(w.message) for w in caught if cls_name in str(w.message)],
    }


__all__ = [
    "CODE_DTYPES",
    "CODE_KEYS",
    "LOW_BIT",
    "SAVE_AT",
    "WORLD",
    "OneRowModel",
    "bert_8bit",
    "data_8bit",
    "dcp_load_8bit",
    "deepspeed_8bit_worker",
    "elements",
    "fsdp2_8bit_dcp_worker",
    "fsdp2_one_row_worker",
    "one_row_run",
    "one_thread",
    "optimizer_8bit",
    "quantized_share",
    "reference_8bit",
    "split_grad_steps",
    "state_by_name",
    "zero1_8bit_worker",
]
