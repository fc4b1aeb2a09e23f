"""Optimizer state held per rank by each engine, for a BERT-base-sized model on 2 gloo ranks.

Run ``python benchmarks/state_memory.py`` (``--help`` for the options). BERT-base is built from
``transformers.BertConfig()`` (random initialisation, no download) as
``BertForSequenceClassification`` (109,483,778 parameters). For each engine, ``--world``
processes are spawned on 127.0.0.1 (gloo, one thread each); each builds the model, wraps it,
builds AdaBalance with ``adabalance_hf.create_optimizer(model, lr=1e-4, weight_decay=0.01)``,
takes one training step on 2 sequences of 16 tokens (AdaBalance creates its state on the first
step) and sums the bytes of the tensors in its optimizer's state
(``adabalance_hf.distributed.optimizer_state_bytes``: ``exp_avg``, ``exp_avg_sq``,
``exp_avg_lr``; for DTensor state the local shard; 0-dim step counters excluded).

Engines: one process (the unsharded reference), DDP, ZeRO-1 (``ZeroRedundancyOptimizer``),
FSDP2 (``fully_shard`` on each encoder layer and the root), DeepSpeed ZeRO-2 and ZeRO-3 (fp32,
client optimizer; skipped when DeepSpeed is not installed). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ENGINES = {
    "single": ("one process", "nothing (reference)"),
    "ddp": ("DDP", "nothing: state replicated"),
    "zero1": ("ZeRO-1 (`ZeroRedundancyOptimizer`)", "optimizer state (whole tensors per rank)"),
    "fsdp2": ("FSDP2 (`fully_shard`)", "parameters, gradients, optimizer state (dim 0)"),
    "ds_zero2": ("DeepSpeed ZeRO-2", "optimizer state, gradients (flat partitions)"),
    "ds_zero3": ("DeepSpeed ZeRO-3", "parameters, gradients, optimizer state"),
}


def bert_base() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig())


def batch(rank: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, 30522, (2, 16), generator=generator)
    return {"input_ids": ids, "labels": torch.randint(0, 2, (2,), generator=generator)}


def measure(engine: str, rank: int) -> tuple[int, int]:
    """One step under ``engine``; returns (state bytes in this process, parameter count)."""
    from adabalance_hf import create_optimizer
    from adabalance_hf.distributed import optimizer_state_bytes

    model = bert_base()
    n_params = sum(p.numel() for p in model.parameters())
    kwargs = {"lr": 1e-4, "weight_decay": 0.01}
    if engine in ("ds_zero2", "ds_zero3"):
        import importlib

        import deepspeed

        # skip a JIT build of an inference-only shared-memory op (deepspeed/comm/torch.py)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        config = {
            "train_micro_batch_size_per_gpu": 2,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": 2 if engine == "ds_zero2" else 3},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        optimizer = create_optimizer(model, **kwargs)
        engine_, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config
        )
        engine_.backward(engine_(**batch(rank)).loss)
        engine_.step()
        return optimizer_state_bytes(ds_optimizer), n_params
    if engine in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
        optimizer = create_optimizer(
            model, sharding="zero1" if engine == "zero1" else "none", **kwargs
        )
    elif engine == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model.bert.encoder.layer:
            fully_shard(layer)
        fully_shard(model)
        optimizer = create_optimizer(model, sharding="fsdp2", foreach=True, **kwargs)
    else:
        optimizer = create_optimizer(model, **kwargs)
    model(**batch(rank)).loss.backward()
    optimizer.step()
    return optimizer_state_bytes(optimizer), n_params


def _worker(rank: int, world: int, port: int, engine: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
    )  # fmt: skip
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300)
    )
    try:
        state_bytes, n_params = measure(engine, rank)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, state_bytes)
        if rank == 0:
            torch.save({"per_rank": gathered, "n_params": n_params}, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(engine: str, world: int, timeout: float) -> dict:
    if engine == "single":
        state_bytes, n_params = measure(engine, 0)
        return {"per_rank": [state_bytes], "n_params": n_params}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pt")
        context = mp.get_context("spawn")
        procs = [
            context.Process(target=_worker, args=(rank, world, port, engine, out))
            for rank in range(world)
        ]
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(max(deadline - time.monotonic(), 0.1))
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        if not Path(out).exists():
            codes = [proc.exitcode for proc in procs]
            raise RuntimeError(f"{engine}: no result (exit codes {codes})")
        return torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2, help="processes per engine (default 2)")
    parser.add_argument(
        "--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES), help="engines to run"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per engine")
    args = parser.parse_args()
    engines = list(args.engines)
    if importlib.util.find_spec("deepspeed") is None:
        skipped = [e for e in engines if e.startswith("ds_")]
        engines = [e for e in engines if not e.startswith("ds_")]
        if skipped:
            print(f"DeepSpeed not installed: skipping {skipped}", file=sys.stderr)

    mib = 2.0**20
    full = None
    print(f"BERT-base (BertConfig(), BertForSequenceClassification), {args.world} gloo ranks, "
          f"torch {torch.__version__}")  # fmt: skip
    print()
    print("| engine | sharded | optimizer state per rank (MiB) | of unsharded |")
    print("|---|---|---|---|")
    for engine in engines:
        start = time.perf_counter()
        result = run(engine, args.world, args.timeout)
        if engine == "single":
            full = result["per_rank"][0]
        per_rank = " / ".join(f"{b / mib:.2f}" for b in result["per_rank"])
        share = " / ".join(f"{b / full:.4f}" for b in result["per_rank"]) if full else "?"
        name, sharded = ENGINES[engine]
        print(f"| {name} | {sharded} | {per_rank} | {share} |", flush=True)
        print(f"{engine}: {time.perf_counter() - start:.0f} s, {result['n_params']:,} parameters",
              file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
