"""Spawned 2-process (gloo, 127.0.0.1) workers for the distributed tests: one per engine.

Worker functions live here, in an importable module, because ``spawn`` re-imports them in each
child. :func:`run_workers` starts the processes, joins them with a hard timeout (killing any
that are left) and returns what each rank returned, or raises with the failing rank's traceback.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
STEPS = 5
PER_RANK = 4  # samples per rank per step: the global batch is WORLD * PER_RANK
SEQ = 8
VOCAB = 64
OPT_KWARGS: dict[str, Any] = {"lr": 1e-2, "weight_decay": 0.01, "final_lr": 0.05, "gamma": 0.1}
# What launchers set; a test of the launch checks starts from an environment without them.
LAUNCH_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "RANK",
               "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED",
               "ACCELERATE_MIXED_PRECISION")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Model and data


def tiny_bert(
    seed: int = 0, *, vocab: int = VOCAB, hidden: int = 32, intermediate: int = 64
) -> torch.nn.Module:
    """A 2-layer BERT classifier (width 32 unless told), no dropout (deterministic)."""
    from _hf_helpers import tiny_bert as hf_tiny_bert

    return hf_tiny_bert(
        seed, vocab=vocab, hidden=hidden, layers=2, intermediate=intermediate,
        max_positions=16, dropout=0.0,
    )  # fmt: skip


def batches(
    steps: int = STEPS, size: int = WORLD * PER_RANK, seed: int = 1, vocab: int = VOCAB
) -> list[dict]:
    """``steps`` global batches of ``size`` rows, token ids below ``vocab``."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (size, SEQ), generator=generator)
        labels = torch.randint(0, 2, (size,), generator=generator)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def shard(batch: dict, rank: int, world: int) -> dict:
    """This rank's contiguous slice of a global batch."""
    size = batch["labels"].shape[0] // world
    return {k: v[rank * size : (rank + 1) * size] for k, v in batch.items()}


def full_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded copies of the parameters, keyed by name without wrapper prefixes."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, param in model.named_parameters():
        value = param.detach()
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[name.removeprefix("module.")] = value.clone()
    return out


def train_steps(model, optimizer, data: list[dict], rank: int = 0, world: int = 1) -> None:
    for batch in data:
        optimizer.zero_grad(set_to_none=True)
        model(**shard(batch, rank, world)).loss.backward()
        optimizer.step()


def reference_run(steps: int = STEPS, **overrides: Any) -> dict[str, Any]:
    """One process, the global batch: the result every engine must reproduce."""
    from adabalance_hf import create_optimizer
    from adabalance_hf.distributed import optimizer_state_bytes

    model = tiny_bert()
    optimizer = create_optimizer(model, **{**OPT_KWARGS, **overrides})
    train_steps(model, optimizer, batches(steps))
    return {"params": full_params(model), "state_bytes": optimizer_state_bytes(optimizer)}


# ---------------------------------------------------------------------------------------------
# Shared by the test files: skip markers and the comparison every engine test makes


needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="needs torch.distributed with the gloo backend",
)
requires_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is not installed: pip install --no-build-isolation deepspeed==0.19.8 "
    "(the `distributed` extra)",
)


def assert_same_params(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same parameter names, and each parameter equal within float32 tolerance."""
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, msg=name)


# ---------------------------------------------------------------------------------------------
# Process management


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _set_env(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )


def _save_atomically(record: dict, path: Path) -> None:
    # The parent may kill a rank at any moment: it must never read a half-written record.
    partial = path.with_suffix(".partial")
    torch.save(record, partial)
    os.replace(partial, path)


def _entry(
    rank: int, world: int, port: int, out_dir: str, fn: Callable, init: bool, args: tuple
) -> None:
    torch.set_num_threads(1)
    _set_env(rank, world, port)
    path = Path(out_dir) / f"rank{rank}.pt"
    try:
        if init:
            dist.init_process_group(
                "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
            )
        result = fn(rank, world, *args)
        if dist.is_initialized():
            dist.barrier()
        _save_atomically({"result": result}, path)
    except BaseException:
        _save_atomically({"error": traceback.format_exc()}, path)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(
    fn: Callable, *args: Any, world: int = WORLD, timeout: float = 120.0, init: bool = True
) -> list[Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` spawned processes; return each rank's result.

    With ``init`` each process joins a gloo group on 127.0.0.1 first (else ``fn`` does, e.g.
    through accelerate; the env vars of torchrun are set either way). A process that fails ends
    the run; past ``timeout`` seconds all are killed and the test fails.
    """
    context = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as out_dir:
        processes = [
            context.Process(target=_entry, args=(rank, world, port, out_dir, fn, init, args))
            for rank in range(world)
        ]
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout
        failed = None
        while time.monotonic() < deadline:
            codes = [p.exitcode for p in processes]
            if all(code is not None for code in codes):
                break
            if any(code not in (None, 0) for code in codes):
                # A rank died: give the others a moment to finish or write their error, then
                # stop (a rank waiting on a dead peer would otherwise hang until the timeout).
                deadline = min(deadline, time.monotonic() + 10.0)
            time.sleep(0.05)
        else:
            failed = f"timed out after {timeout:.0f} s"
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join(5)
        # Success is judged by what each rank wrote, not by exit codes: gloo sometimes aborts
        # in destroy_process_group ("terminate called without an active exception") after a
        # rank has finished and saved its result.
        results, errors = [], []
        for rank in range(world):
            path = Path(out_dir) / f"rank{rank}.pt"
            record = torch.load(path, weights_only=False) if path.exists() else None
            if record is None:
                errors.append(f"rank {rank}: no result (exit code {processes[rank].exitcode})")
            elif "error" in record:
                errors.append(f"rank {rank}:\n{record['error']}")
            else:
                results.append(record["result"])
        if len(results) < world:
            raise AssertionError(f"{fn.__name__}: {failed or 'error'}\n" + "\n".join(errors))
        return results


# ---------------------------------------------------------------------------------------------
# Engine workers: each trains STEPS steps on its slice of the global batches


def _result(model, optimizer) -> dict[str, Any]:
    from adabalance_hf.distributed import optimizer_state_bytes

    return {"params": full_params(model), "state_bytes": optimizer_state_bytes(optimizer)}


def ddp_worker(rank: int, world: int, sharding: str) -> dict[str, Any]:
    """DDP, with a plain AdaBalance (``sharding="none"``) or ZeRO-1 (``"zero1"``)."""
    from torch.nn.parallel import DistributedDataParallel

    from adabalance_hf import create_optimizer

    model = DistributedDataParallel(tiny_bert())
    optimizer = create_optimizer(model, sharding=sharding, **OPT_KWARGS)
    train_steps(model, optimizer, batches(), rank, world)
    result = _result(model, optimizer)
    result["optimizer_type"] = type(optimizer).__name__
    return result


def fsdp2_model(mesh=None) -> torch.nn.Module:
    """The tiny BERT with every encoder layer and the root sharded by ``fully_shard``."""
    from torch.distributed.fsdp import fully_shard

    model = tiny_bert()
    for layer in model.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def fsdp2_worker(rank: int, world: int, path: dict) -> dict[str, Any]:
    """FSDP2 (``fully_shard``), the optimizer built after sharding, on the given path."""
    from torch.distributed.tensor import DTensor

    from adabalance_hf import create_optimizer

    model = fsdp2_model()
    optimizer = create_optimizer(model, sharding="fsdp2", **OPT_KWARGS, **path)
    train_steps(model, optimizer, batches(), rank, world)
    states = [s for s in optimizer.state.values()]
    result = _result(model, optimizer)
    result["dtensor_state"] = all(isinstance(s["exp_avg_lr"], DTensor) for s in states)
    result["n_states"] = len(states)
    return result


def skip_deepspeed_shm_build() -> None:
    """Skip a ~50 s JIT compile: on CPU, deepspeed/comm/torch.py (TorchBackend.__init__ ->
    build_shm_op) builds a shared-memory C++ op, used only by inference all-reduce."""
    import importlib

    # (`deepspeed.comm.torch` as an attribute is the torch package, hence importlib.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def deepspeed_worker(rank: int, world: int, stage: int) -> dict[str, Any]:
    """DeepSpeed ZeRO-``stage`` with AdaBalance as the client optimizer, fp32, on CPU/gloo."""
    import deepspeed

    from adabalance_hf import create_optimizer
    from adabalance_hf.distributed import optimizer_state_bytes

    skip_deepspeed_shm_build()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    model = tiny_bert()
    optimizer = create_optimizer(model, **OPT_KWARGS)
    config = {
        "train_micro_batch_size_per_gpu": PER_RANK,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    engine, ds_optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=config
    )
    for batch in batches():
        loss = engine(**shard(batch, rank, world)).loss
        engine.backward(loss)
        engine.step()
    inner = ds_optimizer.optimizer
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        params = full_params(engine.module)
    result = {
        "params": params,
        "state_bytes": optimizer_state_bytes(inner),
        "inner_type": type(inner).__name__,
        "flat_1d": all(p.dim() == 1 for g in inner.param_groups for p in g["params"]),
        "group_decay": [g["weight_decay"] for g in inner.param_groups],
    }
    return result


# ---------------------------------------------------------------------------------------------
# Checkpoints: save after SAVE_AT of STEPS steps, resume, finish

SAVE_AT = 3


def dcp_save_worker(rank: int, world: int, checkpoint: str) -> dict[str, Any]:
    """FSDP2: train SAVE_AT steps, ``dcp.save`` model + optimizer, then finish uninterrupted."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from adabalance_hf import create_optimizer

    model = fsdp2_model()
    optimizer = create_optimizer(model, sharding="fsdp2", foreach=True, **OPT_KWARGS)
    data = batches()
    train_steps(model, optimizer, data[:SAVE_AT], rank, world)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=checkpoint)
    train_steps(model, optimizer, data[SAVE_AT:], rank, world)
    return {"params": full_params(model)}


def dcp_load(model: torch.nn.Module, optimizer: Any, checkpoint: str) -> None:
    """Load a DCP checkpoint into a fresh model + optimizer (any world size, sharded or not).

    ``get_state_dict`` on the fresh optimizer runs DCP's state initialisation (one step with
    zero gradients and ``lr`` 0), which must leave the parameters alone.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=checkpoint)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )


def dcp_resume_worker(rank: int, world: int, checkpoint: str, path: dict) -> dict[str, Any]:
    """FSDP2 on ``world`` ranks: a fresh (differently initialised) model, load, finish."""
    from torch.distributed.fsdp import fully_shard

    from adabalance_hf import create_optimizer

    model = tiny_bert(seed=1)
    for layer in model.bert.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    optimizer = create_optimizer(model, sharding="fsdp2", **OPT_KWARGS, **path)
    dcp_load(model, optimizer, checkpoint)
    steps = {float(s["step"]) for s in optimizer.state.values()}
    train_steps(model, optimizer, batches()[SAVE_AT:], rank, world)
    return {"params": full_params(model), "loaded_steps": steps}


def zero1_save_worker(rank: int, world: int, checkpoint: str) -> dict[str, Any]:
    """ZeRO-1: train SAVE_AT steps, consolidate on rank 0 and save, then finish uninterrupted."""
    from torch.nn.parallel import DistributedDataParallel

    from adabalance_hf import create_optimizer

    model = DistributedDataParallel(tiny_bert())
    optimizer = create_optimizer(model, sharding="zero1", **OPT_KWARGS)
    data = batches()
    train_steps(model, optimizer, data[:SAVE_AT], rank, world)
    optimizer.consolidate_state_dict(to=0)  # a collective: every rank calls it
    if rank == 0:
        state = {"model": model.module.state_dict(), "optim": optimizer.state_dict()}
        torch.save(state, checkpoint)
    dist.barrier()
    train_steps(model, optimizer, data[SAVE_AT:], rank, world)
    return {"params": full_params(model)}


def zero1_resume_worker(rank: int, world: int, checkpoint: str) -> dict[str, Any]:
    """ZeRO-1 on ``world`` ranks: a fresh model, load the consolidated checkpoint, finish."""
    from torch.nn.parallel import DistributedDataParallel

    from adabalance_hf import create_optimizer
    from adabalance_hf.distributed import optimizer_state_bytes

    saved = torch.load(checkpoint, weights_only=True)
    model = tiny_bert(seed=1)
    model.load_state_dict(saved["model"])
    model = DistributedDataParallel(model)
    optimizer = create_optimizer(model, sharding="zero1", **OPT_KWARGS)
    optimizer.load_state_dict(saved["optim"])
    state_bytes = optimizer_state_bytes(optimizer)
    train_steps(model, optimizer, batches()[SAVE_AT:], rank, world)
    return {"params": full_params(model), "state_bytes": state_bytes}
