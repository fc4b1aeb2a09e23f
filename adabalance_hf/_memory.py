"""Peak transient memory of a piece of code, on CPU (profiler events) or CUDA (allocator stats).

Shared by the benchmarks (``benchmarks/step_speed.py``, ``gpu_check.py``'s speed section) and the
tests (``tests/test_optim_memory.py``), which is why it lives in the package; it is not part of
the public API. ``python -m adabalance_hf._memory`` runs :func:`self_check`.

CPU method: run the code under ``torch.profiler.profile(profile_memory=True)``. With memory
profiling on, every allocation and free made through c10's CPU allocator is recorded as a
``[memory]`` event carrying a signed byte count (positive: allocation, negative: free) and a
timestamp. The raw Kineto events (``prof.profiler.kineto_results.events()``) list every one of
them; ``prof.events()`` folds some into the op that made them, so it is not used. Sorted by
time, the running sum of the byte counts is the live memory relative to the start of the region;
its maximum is the peak extra memory. Frees of tensors allocated before the region count
negatively, as they should (they lower the live memory). Memory that does not go through c10's
allocator (oneDNN or OpenMP scratch space, Python objects) is not seen.

:func:`self_check` verifies the method on ops whose temporaries have known sizes, and cross-checks
it where possible against a method that does not depend on the profiler: the kernel's
resident-set high-water mark (``VmHWM`` in ``/proc/self/status``, reset by writing ``5`` to
``/proc/self/clear_refs``), which must not be lower than the profiler's figure.

CUDA method: ``torch.cuda.max_memory_allocated()`` after ``torch.cuda.reset_peak_memory_stats()``,
minus ``torch.cuda.memory_allocated()`` at the start.

:func:`state_bytes` counts an optimizer's state, through tensor subclasses (8-bit states).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.profiler import ProfilerActivity, profile

__all__ = [
    "peak_extra_bytes",
    "peak_extra_bytes_cpu",
    "peak_extra_bytes_cuda",
    "self_check",
    "state_bytes",
]


def _memory_deltas(prof: profile) -> list[tuple[int, int]]:
    """(timestamp ns, signed bytes) of every CPU allocator event recorded by ``prof``."""
    deltas = []
    for event in prof.profiler.kineto_results.events():
        if event.name() != "[memory]":
            continue
        if event.device_type() != torch.autograd.DeviceType.CPU:
            continue
        deltas.append((event.start_ns(), event.nbytes()))
    return deltas


def _peak_of(deltas: list[tuple[int, int]]) -> int:
    """Maximum running sum of the byte counts, in time order (0 if memory never rose)."""
    peak = running = 0
    # Stable sort: events with equal timestamps keep their recorded order.
    for _, nbytes in sorted(deltas, key=lambda d: d[0]):
        running += nbytes
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (Kineto prints a line at every profiler start and stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes_cpu(fn: Callable[[], object]) -> int:
    """Peak bytes allocated on CPU above the level at entry while ``fn()`` runs."""
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    return _peak_of(_memory_deltas(prof))


def peak_extra_bytes_cuda(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated on a CUDA device above the level at entry while ``fn()`` runs."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak transient bytes of ``fn()`` on ``device`` (CPU or CUDA)."""
    if device.type == "cuda":
        return peak_extra_bytes_cuda(fn, device)
    return peak_extra_bytes_cpu(fn)


def _storages(value: Any) -> list[Tensor]:
    """Plain tensors holding ``value``'s data: a tensor subclass through its inner tensors."""
    if not torch.is_tensor(value):
        return []
    if type(value) in (Tensor, torch.nn.Parameter) or not hasattr(value, "__tensor_flatten__"):
        return [value]
    return [t for name in value.__tensor_flatten__()[0] for t in _storages(getattr(value, name))]


def state_bytes(optimizer: Optimizer) -> int:
    """Bytes of an optimizer's state: every tensor in ``optimizer.state``, counted whole.

    Tensor subclasses are counted through their inner tensors (``__tensor_flatten__``): for
    torchao's ``OptimState8bit`` its ``codes``, ``scale`` and ``qmap``, not ``numel`` times the
    nominal dtype. 0-dim step counters are included; a piece of memory held by several entries
    (a shared code table) is counted once; Python numbers (bitsandbytes' ``step``) are not.

    Args:
        optimizer: an optimizer after at least one step (its state exists).

    Returns:
        The total in bytes.
    """
    pieces = {
        (t.data_ptr(), t.numel() * t.element_size())
        for param_state in optimizer.state.values()
        for value in param_state.values()
        for t in _storages(value)
    }
    return sum(nbytes for _, nbytes in pieces)


def _proc_status_bytes(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _peak_rss_extra(fn: Callable[[], object]) -> int | None:
    """Resident-set high-water mark above the level at entry, or None where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    base = _proc_status_bytes("VmRSS")
    fn()
    peak = _proc_status_bytes("VmHWM")
    if base is None or peak is None:
        return None
    return peak - base


def self_check(numel: int = 4_000_000) -> dict[str, int | None]:
    """Verify the CPU method on known temporaries; raise ``AssertionError`` if it is off.

    Case A: ``a = x + 1; b = x * 2; del a; c = b.sqrt()`` has at most two ``numel`` float32
    temporaries alive at once. Case B: ``torch.full_like`` then an in-place op (no new memory),
    then ``torch.clamp`` out-of-place: two alive at once. Case C: in-place ops only: zero.
    Returns the measured figures (and the RSS cross-check of case A where available).
    """
    x = torch.randn(numel)
    size = numel * x.element_size()
    slack = 64 * 1024  # 0-dim tensors and other small bookkeeping allocations

    def case_a() -> None:
        a = x + 1
        b = x * 2
        del a
        c = b.sqrt()
        del b, c

    def case_b() -> None:
        s = torch.full_like(x, 0.5)
        s.div_(x)
        t = torch.clamp(s, -1.0, 1.0)
        del s, t

    def case_c() -> None:
        x.mul_(1.0).add_(0.0)

    measured: dict[str, int | None] = {
        "case_a_expected": 2 * size,
        "case_a": peak_extra_bytes_cpu(case_a),
        "case_b": peak_extra_bytes_cpu(case_b),
        "case_c": peak_extra_bytes_cpu(case_c),
    }
    for name, expected in (("case_a", 2 * size), ("case_b", 2 * size), ("case_c", 0)):
        got = measured[name]
        assert expected <= got <= expected + slack, (
            f"memory self-check {name}: expected {expected} bytes, measured {got}"
        )
    rss = _peak_rss_extra(case_a)
    measured["case_a_rss"] = rss
    if rss is not None:
        # RSS also counts pages of libraries, and glibc may not reuse or return freed blocks at
        # once, so it can exceed the live-tensor peak; it must not fall short of it.
        assert rss >= 0.9 * measured["case_a"], (
            f"memory self-check case_a: profiler says {measured['case_a']} bytes, "
            f"RSS high-water mark says {rss}"
        )
    return measured


if __name__ == "__main__":
    print(self_check())
