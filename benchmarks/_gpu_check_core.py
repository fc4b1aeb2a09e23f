"""What every section of ``gpu_check.py`` shares: its context, the check recorder, paths, timing.

A section is a function ``section(ctx: Context, rec: Recorder) -> None``. It records each check
with :meth:`Recorder.check` (or :meth:`Recorder.skip`) and each table row with
:meth:`Recorder.row`; :meth:`Recorder.item` wraps one piece of work so that an exception there is
recorded as that item's error and the section carries on with the next, and so that an item that
would start after the section's deadline is recorded as ``timeout`` instead of run.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim import Optimizer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (HERE, REPO / "tests"):  # _shapes, and the float64 oracle
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from adabalance_hf import AdaBalance, AdaBalance8bit  # noqa: E402

#: Statuses of a check. ``pass`` and ``skipped`` (a documented reason, e.g. an optional package
#: that is not installed) do not fail the run; ``fail``, ``error`` and ``timeout`` do.
OK_STATUSES = ("pass", "skipped")

#: Every AdaBalance execution path: ``(class, keyword arguments, compiles on its first step)``.
PATHS: dict[str, tuple[type[Optimizer], dict[str, Any], bool]] = {
    "per_tensor": (AdaBalance, {"foreach": False}, False),
    "foreach": (AdaBalance, {"foreach": True}, False),
    "fused": (AdaBalance, {"fused": True}, True),
    "8bit_fused": (AdaBalance8bit, {"fused": True}, True),
    "8bit_eager": (AdaBalance8bit, {"fused": False}, False),
}


def is_8bit(path: str) -> bool:
    """Whether path ``path`` keeps block-wise 8-bit state."""
    return path.startswith("8bit")


@dataclass
class Context:
    """What a section knows of the run.

    Args:
        device: where the tensors live.
        quick: the smaller variant of every section.
        deadline: ``time.monotonic()`` value after which no new item starts.
        wikitext_dir: folder with WikiText-2 text files (``train.txt``, ``valid.txt`` ...).
    """

    device: torch.device
    quick: bool
    deadline: float
    wikitext_dir: Path

    @property
    def cuda(self) -> bool:
        """Whether the run is on a CUDA device."""
        return self.device.type == "cuda"

    @property
    def cpu_quick(self) -> bool:
        """``--device cpu --quick``: compiled variants beyond the first are left out."""
        return self.device.type == "cpu" and self.quick

    def pick(self, full: Any, quick: Any, cpu_quick: Any) -> Any:
        """The value for this run: full, ``--quick`` on CUDA, or ``--device cpu --quick``."""
        return cpu_quick if self.cpu_quick else quick if self.quick else full

    def seconds_left(self) -> float:
        """Seconds until the section's deadline."""
        return self.deadline - time.monotonic()


@dataclass
class Recorder:
    """The checks, table rows and notes of one section, as plain JSON-ready values."""

    ctx: Context
    checks: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    item_seconds: dict[str, float] = field(default_factory=dict)

    def check(
        self, name: str, passed: bool, value: Any = None, bound: Any = None, detail: str = ""
    ) -> bool:
        """Record a check that passed or failed; returns ``passed``."""
        status = "pass" if passed else "fail"
        self.checks.append(dict(name=name, status=status, value=value, bound=bound, detail=detail))
        return passed

    def skip(self, name: str, why: str) -> None:
        """Record a check left out for a documented reason (not a failure)."""
        self.checks.append(dict(name=name, status="skipped", value=None, bound=None, detail=why))

    def row(self, table: str, values: dict[str, Any]) -> None:
        """Append a row to table ``table``."""
        self.tables.setdefault(table, []).append(values)

    @contextlib.contextmanager
    def item(self, name: str, min_seconds: float = 0.0) -> Iterator[bool]:
        """Run one piece of work: yields False (and records a timeout) if time is up.

        An exception inside is recorded as check ``name`` with status ``error`` and swallowed.
        Use as ``with rec.item("x") as go: if go: ...``.
        """
        left = self.ctx.seconds_left()
        if left <= min_seconds:
            detail = f"not started: {left:.0f} s of the section's time budget left"
            self.checks.append(
                dict(name=name, status="timeout", value=None, bound=None, detail=detail)
            )
            yield False
            return
        begin = time.perf_counter()
        try:
            yield True
        except Exception as error:  # one failing item must not lose the others
            self.checks.append(
                dict(
                    name=name,
                    status="error",
                    value=None,
                    bound=None,
                    detail=f"{type(error).__name__}: {error}"[:2000],
                    traceback=traceback.format_exc()[-6000:],
                )
            )
            if self.ctx.cuda and _cuda_healthy():
                torch.cuda.empty_cache()
        finally:
            self.item_seconds[name] = round(time.perf_counter() - begin, 3)


def _cuda_healthy() -> bool:
    try:
        torch.cuda.synchronize()
        return True
    except Exception:  # a sticky CUDA error: later items will report it too
        return False


def synchronize(device: torch.device) -> None:
    """Wait for the device (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times_ms(step: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``step``: CUDA events on CUDA, else a host clock."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            step()
            times.append((time.perf_counter() - begin) * 1e3)
    return times


def timed_once_s(step: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``step`` (first steps: state creation and compilation)."""
    synchronize(device)
    begin = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - begin


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


def finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)
