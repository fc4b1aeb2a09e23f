"""accelerate workers for the distributed tests: the engines' training through
``Accelerator.prepare``, with gradient accumulation and ``accelerator.clip_grad_norm_``.

Run in processes spawned by :func:`_dist_helpers.run_workers`, and as the script that
``accelerate launch`` starts (``tests/test_distributed_accelerate.py``)::

    accelerate launch [...] tests/_dist_accelerate.py OUT_DIR [deepspeed] [no-gloo] [no-cpu]

Each process then writes ``OUT_DIR/<pid>.pt`` with what :func:`accelerate_train` returns.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from _dist_helpers import (
    OPT_KWARGS,
    STEPS,
    batches,
    full_params,
    skip_deepspeed_shm_build,
    tiny_bert,
)

ACCUM = 2
CLIP = 0.5
GLOBAL_BATCH = 16  # samples per optimizer step, however many processes share them


def _rows(steps: int) -> list[dict]:
    (batch,) = batches(1, GLOBAL_BATCH * steps, seed=3)
    return [{k: v[i] for k, v in batch.items()} for i in range(GLOBAL_BATCH * steps)]


def accelerate_reference(steps: int = STEPS) -> dict[str, Any]:
    """Plain loop: one global batch per step, clipped like accelerator.clip_grad_norm_."""
    from adabalance_hf import create_optimizer

    rows = _rows(steps)
    model = tiny_bert()
    optimizer = create_optimizer(model, **OPT_KWARGS)
    for step in range(steps):
        chunk = rows[step * GLOBAL_BATCH : (step + 1) * GLOBAL_BATCH]
        batch = {k: torch.stack([row[k] for row in chunk]) for k in chunk[0]}
        optimizer.zero_grad()
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
    return {"params": full_params(model)}


def accelerate_train(
    *, cpu: bool = True, deepspeed: bool = False, gloo_state: bool = True
) -> dict[str, Any]:
    """Train through ``Accelerator.prepare``; report world size, warnings and parameters.

    With ``deepspeed`` (and ``gloo_state``) a gloo ``PartialState`` is created first: without it
    DeepSpeed under accelerate on CPU counts a world size of 1.
    """
    import warnings

    from accelerate import Accelerator, PartialState
    from torch.utils.data import DataLoader

    from adabalance_hf import create_optimizer
    from adabalance_hf.distributed import DistributedSetupWarning

    if deepspeed:
        skip_deepspeed_shm_build()
        if gloo_state:
            PartialState(backend="gloo")
        accelerator = Accelerator()
    else:
        accelerator = Accelerator(cpu=cpu, gradient_accumulation_steps=ACCUM)
    world = accelerator.num_processes
    accum = accelerator.gradient_accumulation_steps
    micro = GLOBAL_BATCH // (world * accum)
    model = tiny_bert()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = create_optimizer(model, **OPT_KWARGS)
    setup_warnings = [
        str(w.message) for w in caught if issubclass(w.category, DistributedSetupWarning)
    ]
    for message in setup_warnings:  # visible even if a later step fails
        print(f"DistributedSetupWarning: {message}", file=sys.stderr, flush=True)
    loader = DataLoader(_rows(STEPS), batch_size=micro, shuffle=False)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    optimizer_steps = 0
    for batch in loader:
        with accelerator.accumulate(model):
            accelerator.backward(model(**batch).loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), CLIP)
                optimizer_steps += 1
            optimizer.step()
            optimizer.zero_grad()
    unwrapped = accelerator.unwrap_model(model)
    if deepspeed:  # ZeRO-3 partitions the parameters: gather them (a no-op for ZeRO-1/2)
        import deepspeed as ds

        with ds.zero.GatheredParameters(list(unwrapped.parameters())):
            params = full_params(unwrapped)
    else:
        params = full_params(unwrapped)
    return {
        "num_processes": world,
        "process_index": accelerator.process_index,
        "distributed_type": str(accelerator.distributed_type),
        "optimizer_steps": optimizer_steps,
        "setup_warnings": setup_warnings,
        "params": params,
    }


def accelerate_worker(rank: int, world: int, cpu: bool) -> dict[str, Any]:
    return accelerate_train(cpu=cpu)


if __name__ == "__main__":
    torch.set_num_threads(1)
    flags = sys.argv[2:]
    result = accelerate_train(
        cpu="no-cpu" not in flags, deepspeed="deepspeed" in flags, gloo_state="no-gloo" not in flags
    )
    torch.save(result, Path(sys.argv[1]) / f"{os.getpid()}.pt")
