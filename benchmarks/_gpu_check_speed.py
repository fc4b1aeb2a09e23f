"""Section ``speed`` of ``gpu_check.py``: step time, peak memory and state bytes per parameter.

Rows: AdaBalance fused and foreach, AdaBalance8bit and AdaBalance4bit fused,
``torch.optim.AdamW`` fused and
foreach, torchao's ``AdamW8bit`` (where it imports); ``weight_decay=0`` for all. Sets: BERT-base,
GPT-2 small and TinyLlama-1.1B shapes and a LoRA adapter's (r=16 on Llama-2-7B's linear layers,
448 tensors, where the per-tensor costs are most of a step) from ``_shapes.py`` (on
``--device cpu --quick`` the same shapes with every dimension divided by 6, 6, 4 and 4, so that
8-bit blocks stay 128 wide, and 12 tensors after the first). Each row starts from a clone of the
same parameters with the same fixed gradients (std 0.02 and 1e-2, as ``_shapes.make_tensors``):

* ``first_step_s``: the first ``step()`` (state creation and any compile this process has not
  done yet);
* ``median_ms``: median of ``repeats`` steps after ``warmup`` more, each timed by CUDA events
  (a host clock on CPU), and its ratio to ``AdamW(fused=True)`` on the same set;
* ``state_bytes_per_param`` (``adabalance_hf._memory.state_bytes``: through tensor subclasses);
* ``peak_allocated_gib``: ``torch.cuda.max_memory_allocated`` over the row (parameters, gradients,
  state and temporaries), and ``step_peak_extra_mib``: what one more step allocates above the
  level before it (``adabalance_hf._memory.peak_extra_bytes``).

On ``--device cpu --quick`` torchao's ``AdamW8bit`` (on CPU its first step compiles for 7-25 s,
even on one small tensor) only takes two steps on one 64 x 256 tensor, with ``torch.compile``
patched to return the function it is given (its step function runs eagerly).
"""

from __future__ import annotations

import gc
import importlib
import math
import time
import unittest.mock
from typing import Any

import torch
from _gpu_check_core import Context, Recorder, median, step_times_ms, synchronize, timed_once_s
from _shapes import PARAM_SETS, Shapes, make_tensors
from torch import Tensor
from torch.optim import AdamW, Optimizer

from adabalance_hf import AdaBalance, AdaBalance4bit, AdaBalance8bit
from adabalance_hf._memory import peak_extra_bytes, state_bytes

GiB, MiB = 1024**3, 1024**2
BASELINE = "adamw_fused"
NO_DECAY = {"weight_decay": 0.0}
#: name -> (optimizer class or "module:Name", keyword arguments)
ROWS: dict[str, tuple[Any, dict[str, Any]]] = {
    "adabalance_fused": (AdaBalance, {"fused": True}),
    "adabalance_foreach": (AdaBalance, {"foreach": True}),
    "adabalance8bit_fused": (AdaBalance8bit, {"fused": True}),
    "adabalance4bit_fused": (AdaBalance4bit, {"fused": True}),
    BASELINE: (AdamW, {**NO_DECAY, "fused": True}),
    "adamw_foreach": (AdamW, {**NO_DECAY, "foreach": True}),
    "torchao_adamw8bit": ("torchao.optim:AdamW8bit", NO_DECAY),
}
# set -> divisor of dimensions on CPU --quick
SETS = {"bert": 6, "gpt2": 6, "llama1b": 4, "llama7b-lora": 4}
CPU_QUICK_TENSORS = 12


def resolve(spec: Any) -> type[Optimizer]:
    """The optimizer class of a row (imports an optional package)."""
    if not isinstance(spec, str):
        return spec
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def shrink(shapes: Shapes, divisor: int) -> Shapes:
    """``shapes`` with every dimension divided by ``divisor`` (at least 1)."""
    return [(name, tuple(max(1, d // divisor) for d in shape)) for name, shape in shapes]


def device_tensors(shapes: Shapes, device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
    """Parameters and gradients as ``_shapes.make_tensors``, drawn on the device (fast on CUDA)."""
    if device.type != "cuda":
        return make_tensors(shapes, device, torch.float32)
    gen = torch.Generator(device=device).manual_seed(0)
    params, grads = [], []
    for _, shape in shapes:
        params.append(torch.randn(shape, generator=gen, device=device) * 0.02)
        grads.append(torch.randn(shape, generator=gen, device=device) * 1e-2)
    return params, grads


def fresh_params(init: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """Leaf parameters cloned from ``init``, each with its (shared, read-only) gradient."""
    params = [p.clone().requires_grad_(True) for p in init]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    return params


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_row(name: str, init: list[Tensor], grads: list[Tensor], ctx: Context) -> dict:
    """One row's figures (see the module's doc)."""
    spec, kwargs = ROWS[name]
    device = ctx.device
    warmup, repeats = ctx.pick(full=(3, 10), quick=(2, 5), cpu_quick=(1, 3))
    numel = sum(p.numel() for p in init)
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(device)
    optimizer = resolve(spec)(fresh_params(init, grads), **kwargs)
    first = timed_once_s(optimizer.step, device)
    for _ in range(warmup):
        optimizer.step()
    synchronize(device)
    times = step_times_ms(optimizer.step, device, repeats)
    peak_all = torch.cuda.max_memory_allocated(device) / GiB if ctx.cuda else None
    extra = peak_extra_bytes(optimizer.step, device)
    row = dict(
        row=name,
        median_ms=median(times),
        min_ms=min(times),
        times_ms=times,
        first_step_s=first,
        state_bytes_per_param=state_bytes(optimizer) / numel,
        peak_allocated_gib=peak_all,
        step_peak_extra_mib=extra / MiB,
        finite=all(bool(torch.isfinite(p).all()) for p in optimizer.param_groups[0]["params"]),
    )
    del optimizer
    _release(device)
    return row


def _torchao_smoke(ctx: Context, rec: Recorder) -> None:
    """Two steps of torchao's AdamW8bit on one 64 x 256 tensor, not compiled (CPU --quick)."""
    p = torch.randn(64, 256, device=ctx.device, requires_grad=True)
    p.grad = torch.randn_like(p) * 1e-2
    optimizer = resolve(ROWS["torchao_adamw8bit"][0])([p], **NO_DECAY)
    begin = time.perf_counter()
    with unittest.mock.patch.object(torch, "compile", lambda fn, **_: fn):  # eager
        optimizer.step()
        optimizer.step()
    bytes_per = state_bytes(optimizer) / p.numel()
    ok = bool(torch.isfinite(p).all()) and bytes_per < 4
    rec.check("torchao AdamW8bit: two eager steps on 64 x 256", ok, bytes_per, "< 4 bytes/param",
              f"{time.perf_counter() - begin:.1f} s")  # fmt: skip


def speed(ctx: Context, rec: Recorder) -> None:
    """Every row on every set; a table per set, checks that every row ran and stayed finite."""
    rows = list(ROWS)
    try:
        resolve(ROWS["torchao_adamw8bit"][0])
    except (ImportError, AttributeError) as error:
        rows.remove("torchao_adamw8bit")
        rec.skip("torchao AdamW8bit", f"not measured: does not import ({error})"[:500])
    if ctx.cpu_quick and "torchao_adamw8bit" in rows:
        rows.remove("torchao_adamw8bit")
        with rec.item("torchao AdamW8bit smoke") as go:
            if go:
                _torchao_smoke(ctx, rec)
    sets = ["bert"] if ctx.quick and not ctx.cpu_quick else list(SETS)
    for set_name in sets:
        title, shapes_fn = PARAM_SETS[set_name]
        shapes = shapes_fn()
        if ctx.cpu_quick:
            shapes = shrink(shapes, SETS[set_name])[1 : 1 + CPU_QUICK_TENSORS]
            title = f"{title} / {SETS[set_name]} per dim"
        numel = sum(math.prod(s) for _, s in shapes)
        table = f"speed {set_name}"
        rec.notes.append(f"{table}: {title}, {numel:,} parameters in {len(shapes)} tensors")
        with rec.item(f"{set_name}: tensors") as go:
            if not go:
                continue
            init, grads = device_tensors(shapes, ctx.device)
        results = {}
        for name in [BASELINE, *(r for r in rows if r != BASELINE)]:
            with rec.item(f"{set_name} {name}", min_seconds=5.0) as go:
                if go:
                    results[name] = measure_row(name, init, grads, ctx)
                    rec.check(f"{set_name} {name}: stepped, finite", results[name]["finite"])
        del init, grads
        _release(ctx.device)
        base = results.get(BASELINE, {}).get("median_ms")
        for name in rows:
            if name in results:
                r = results[name]
                r["ratio_vs_adamw_fused"] = r["median_ms"] / base if base else None
                rec.row(table, {"set": title, "numel": numel, **r})
