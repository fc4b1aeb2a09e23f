"""Step time, state and memory of optimizers on real model shapes, timed by torch's Timer.

``python benchmarks/step_speed.py`` (``--help``). ``--sets`` (``_shapes.py``): plain tensors in the
shapes of BERT-base (``bert``), GPT-2 small (``gpt2``), a 2-layer BERT with an 8K vocabulary
(``small``, quick), BERT-base's elements as one tensor (``bert-flat``: the step without per-tensor
costs). ``--rows``: entries of :data:`ROWS`, AdaBalance and AdamW per-tensor, foreach
and fused, the reference code's loop (``_reference_adabalance.py``, checked against the spec's
oracle by ``tests/test_reference_code.py``), torchao's and bitsandbytes' ``AdamW8bit`` where the
package imports (on CPU 10-20x AdamW fused: in ``all``, not in ``default``). ``weight_decay=0``
everywhere. Each row starts from a clone of the same parameters with the same fixed gradients:

* first step s: one ``step()`` (state creation and any compile; kernels already compiled in this
  process are reused); rows with ``compiles=True`` also in fresh processes, cold and warm cache;
* median ms: after ``--warmup`` steps, ``torch.utils.benchmark.Timer.blocked_autorange``
  (``--timer adaptive``: ``adaptive_autorange``) until at least ``--repeats`` measurements, and
  the ratio to ``torch.optim.AdamW(fused=True)``, always measured, in this process, on the same
  parameters;
* state bytes/param (``adabalance_hf._memory.state_bytes``, tensor subclasses through their inner
  tensors) and peak extra memory of one more step (``adabalance_hf._memory.peak_extra_bytes``,
  self-checked at start).

Errors are raised, not written into the table. ``--json PATH`` writes every figure.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import AdamW, Optimizer
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reference_adabalance import ReferenceAdaBalance
from _shapes import PARAM_SETS, Shapes, make_tensors

from adabalance_hf import AdaBalance, AdaBalance4bit, AdaBalance8bit
from adabalance_hf._memory import peak_extra_bytes, self_check, state_bytes

MiB = 1024**2
BASELINE = "adamw_fused"
_START = time.perf_counter()
Tensors = list[Tensor]


def progress(message: str) -> None:
    """One line of progress on stderr (stdout carries only the report)."""
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


def fresh_params(init: Tensors, grads: Tensors) -> Tensors:
    """Leaf parameters cloned from ``init``, each with its (shared, read-only) gradient."""
    params = [p.clone().requires_grad_(True) for p in init]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    return params


@dataclass(frozen=True)
class Row:
    """One row of the table: how to build its optimizer, ``cls(params, **kwargs)``.

    Args:
        optimizer: name in the table's first column.
        path: execution path, the table's second column.
        cls: the optimizer class, or ``"module:Name"`` for one in an optional package: the row
            then exists only where ``module`` imports and has ``Name`` (a note says otherwise).
        kwargs: keyword arguments of ``cls`` besides the parameters.
        slow_on_cpu: left out of ``--rows default`` on CPU (``--rows all`` has it).
        compiles: the first step compiles: it is also timed in fresh processes (cold/warm cache).
    """

    optimizer: str
    path: str
    cls: type[Optimizer] | str
    kwargs: dict[str, Any] = field(default_factory=dict)
    slow_on_cpu: bool = False
    compiles: bool = False

    def resolve(self) -> type[Optimizer]:
        """The optimizer class (imports an optional package)."""
        if not isinstance(self.cls, str):
            return self.cls
        module, name = self.cls.split(":")
        return getattr(importlib.import_module(module), name)

    def build(self, params: Tensors) -> Optimizer:
        """The optimizer of ``params``."""
        return self.resolve()(params, **self.kwargs)


NO_DECAY = {"weight_decay": 0.0}  # AdaBalance's default; AdamW's is 1e-2
ROWS: dict[str, Row] = {
    "adabalance_per_tensor": Row("AdaBalance", "per-tensor", AdaBalance, {"foreach": False}),
    "adabalance_foreach": Row("AdaBalance", "foreach", AdaBalance, {"foreach": True}),
    "adabalance_fused": Row("AdaBalance", "fused", AdaBalance, {"fused": True}, compiles=True),
    "adamw_per_tensor": Row("AdamW", "per-tensor", AdamW, {**NO_DECAY, "foreach": False}),
    "adamw_foreach": Row("AdamW", "foreach", AdamW, {**NO_DECAY, "foreach": True}),
    BASELINE: Row("AdamW", "fused", AdamW, {**NO_DECAY, "fused": True}),
    "reference": Row("reference code", "one loop, temporaries", ReferenceAdaBalance),
    "torchao_adamw8bit": Row(
        "torchao AdamW8bit",
        "torch.compile",
        "torchao.optim:AdamW8bit",
        NO_DECAY,
        slow_on_cpu=True,
        compiles=True,
    ),
    "bnb_adamw8bit": Row(
        "bitsandbytes AdamW8bit",
        "8-bit blockwise",
        "bitsandbytes.optim:AdamW8bit",
        NO_DECAY,
        slow_on_cpu=True,
    ),
    "adabalance8bit_fused": Row(
        "AdaBalance8bit", "fused, 8-bit state", AdaBalance8bit, {"fused": True}, compiles=True
    ),
    "adabalance4bit_fused": Row(
        "AdaBalance4bit", "fused, 4-bit state", AdaBalance4bit, {"fused": True}, compiles=True
    ),
}


def pick_rows(spec: str, device: torch.device) -> tuple[list[str], list[str]]:
    """Row names from ``--rows`` (names, ``default``, ``all``) and notes on the rows left out."""
    slow = device.type == "cpu"
    chosen = [BASELINE]  # every ratio is against it, measured in this process
    for word in spec.split(","):
        if word not in (*ROWS, "default", "all"):
            raise SystemExit(f"unknown row {word!r}; choose from default, all, {', '.join(ROWS)}")
        picked = [word] if word in ROWS else list(ROWS)
        chosen += [n for n in picked if word != "default" or not (slow and ROWS[n].slow_on_cpu)]
    chosen = sorted(set(chosen), key=list(ROWS).index)
    notes = [
        f"{r.optimizer}: left out on CPU, where it is slow (add it: `--rows default,{n}`)"
        for n, r in ROWS.items()
        if slow and r.slow_on_cpu and n not in chosen
    ]
    names = []
    for name in chosen:
        try:
            ROWS[name].resolve()
            names.append(name)
        except (ImportError, AttributeError) as exc:  # an optional package or class: a note
            notes.append(f"{ROWS[name].optimizer}: not measured, not available ({exc})")
    return names, notes


def timed_step(optimizer: Optimizer, device: torch.device) -> float:
    """Seconds of one ``optimizer.step()``, synchronized on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    optimizer.step()
    sync()
    return time.perf_counter() - start


def measure_steps(optimizer: Optimizer, args: argparse.Namespace, estimate_s: float) -> list[float]:
    """Seconds per ``optimizer.step()`` from torch's Timer: at least ``args.repeats`` values."""
    timer = Timer("optimizer.step()", globals={"optimizer": optimizer}, num_threads=args.threads)
    times: list[float] = []
    while len(times) < args.repeats:
        run_time = max(args.min_run_time, 1.05 * (args.repeats - len(times)) * estimate_s)
        if args.timer == "adaptive":
            times += timer.adaptive_autorange(max_run_time=max(10.0, 3 * run_time)).times
        else:
            times += timer.blocked_autorange(min_run_time=run_time).times
    return times


def run_row(name: str, init: Tensors, grads: Tensors, args: argparse.Namespace) -> dict[str, Any]:
    """First-step time, step times, state bytes and peak extra memory of row ``name``."""
    progress(name)
    device, row = torch.device(args.device), ROWS[name]
    numel, param_bytes = sum(p.numel() for p in init), sum(p.nbytes for p in init)
    optimizer = row.build(fresh_params(init, grads))
    first = timed_step(optimizer, device)
    estimate = min(timed_step(optimizer, device) for _ in range(max(args.warmup, 1)))
    times = measure_steps(optimizer, args, estimate)
    gc.collect()
    peak = peak_extra_bytes(optimizer.step, device)
    q1, _, q3 = statistics.quantiles(times, n=4)
    result = {
        "row": name,
        "optimizer": row.optimizer,
        "path": row.path,
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "iqr_ms": (q3 - q1) * 1e3,
        "times_ms": [t * 1e3 for t in times],
        "ratio_vs_adamw_fused": None,  # set once the baseline row is measured
        "first_step_s": first,
        "peak_extra_bytes": peak,
        "peak_extra_pct_of_params": 100.0 * peak / param_bytes,
        "state_bytes_per_param": state_bytes(optimizer) / numel,
    }
    del optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def bf16_master_state_bytes(shapes: Shapes, device: torch.device) -> float:
    """State bytes per parameter of ``AdaBalance(bf16 params, master_weights=True)``."""
    params = fresh_params(*make_tensors(shapes, device, torch.bfloat16))
    optimizer = AdaBalance(params, master_weights=True)
    optimizer.step()
    return state_bytes(optimizer) / sum(p.numel() for p in params)


def first_step_probe(name: str, set_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """First step of row ``name`` in a fresh process with an empty, then a warm inductor cache."""
    progress(f"{set_name}: {name}, first step in fresh processes")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-first-step", name, set_name]
    cmd += ["--threads", str(args.threads), "--device", args.device]
    out = {}
    with tempfile.TemporaryDirectory(prefix="step-speed-inductor-") as cache_dir:
        for label in ("cold", "warm"):
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
            out[label] = json.loads(proc.stdout.splitlines()[-1])
    return out


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    """CPU, threads, versions and device of this run."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln]
    loadavg = Path("/proc/loadavg")
    return {
        "cpu": (cpu or [platform.processor() or platform.machine()])[0],
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average": " ".join(loadavg.read_text().split()[:3]) if loadavg.exists() else None,
    }


HEADINGS = "optimizer|path|median ms|ratio vs AdamW fused|state bytes/param|peak extra MiB"
HEADINGS += "|% of param memory|first step s"  # and the cells, from a row of the JSON report:
CELLS = "{optimizer}|{path}|{median_ms:.1f}|{ratio_vs_adamw_fused:.2f}x|{state_bytes_per_param:.2f}"
CELLS += "|{peak_extra_mib:.1f}|{peak_extra_pct_of_params:.1f}|{first_step_s:.2f}"


def print_set(entry: dict[str, Any]) -> None:
    """A parameter set's markdown table and the notes under it."""
    n, mib, rows = entry["numel"], entry["param_bytes"] / MiB, entry["rows"]
    print(f"\n### {entry['title']}: {n:,} parameters in {entry['tensors']} tensors, {mib:.1f} MiB")
    print("\n| " + HEADINGS.replace("|", " | ") + " |\n|---|---|" + "---:|" * 6)
    for r in rows:
        cells = CELLS.format(**r, peak_extra_mib=r["peak_extra_bytes"] / MiB)
        print("| " + cells.replace("|", " | ") + " |")
    w = max(rows, key=lambda r: r["iqr_ms"] / r["median_ms"])
    spread = w["iqr_ms"] / w["median_ms"]
    noisy = " (noisy: other processes? rerun on an idle machine)" if spread > 0.1 else ""
    print(f"\n- interquartile range at most {100 * spread:.0f}% of the median ", end="")
    print(f"({w['optimizer']} {w['path']}, {len(w['times_ms'])} measurements){noisy}")
    for name, probe in entry["first_step_probes"].items():
        cold_warm = (f"{k} cache {v['first_step_s']:.2f} s" for k, v in probe.items())
        text = f"n/a ({probe['skipped']})" if "skipped" in probe else "; ".join(cold_warm)
        print(f"- first {ROWS[name].optimizer} {ROWS[name].path} step, fresh process: {text}")
    b = {k: "n/a" if v is None else f"{v:.2f}" for k, v in entry["state_bytes_per_param"].items()}
    print(
        f"- optimizer state, bytes per parameter: AdaBalance fp32 params {b['adabalance_fp32']}; "
        f"bf16 params + master weights {b['adabalance_bf16_master_weights']} "
        f"(AdamW fp32 params {b['adamw_fp32']})"
    )
    for note in entry["not_measured"]:
        print(f"- {note}")


def measure_set(
    set_name: str, names: list[str], notes: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Every row on one parameter set: the set's entry of the JSON report."""
    (title, shapes_fn), device = PARAM_SETS[set_name], torch.device(args.device)
    shapes = shapes_fn()
    progress(f"{set_name}: building parameters and gradients")
    init, grads = make_tensors(shapes, device, torch.float32)
    numel = sum(p.numel() for p in init)
    rows = [run_row(name, init, grads, args) for name in names]
    del init, grads
    gc.collect()
    base = next(r for r in rows if r["row"] == BASELINE)
    for r in rows:
        r["ratio_vs_adamw_fused"] = r["median_ms"] / base["median_ms"]
    skip = "--no-fused-warmup" if args.no_fused_warmup else None
    if args.quick and set_name != args.sets.split(",")[0]:
        skip = "--quick measures it on the first set only"
    probes = {
        n: {"skipped": skip} if skip else first_step_probe(n, set_name, args)
        for n in names
        if ROWS[n].compiles
    }
    fp32 = next((r["state_bytes_per_param"] for r in rows if r["optimizer"] == "AdaBalance"), None)
    state = dict(adabalance_fp32=fp32, adamw_fp32=base["state_bytes_per_param"])
    state["adabalance_bf16_master_weights"] = bf16_master_state_bytes(shapes, device)
    return {
        "title": title,
        "numel": numel,
        "tensors": len(shapes),
        "param_bytes": numel * 4,
        "rows": rows,
        "not_measured": notes,
        "fused_first_step": probes.get("adabalance_fused", {"skipped": "row not chosen"}),
        "first_step_probes": probes,
        "state_bytes_per_param": state,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--sets", default="bert,gpt2", help=f"comma-separated: {', '.join(PARAM_SETS)}")
    add("--rows", default="default", help=f"comma-separated: default, all, {', '.join(ROWS)}")
    add("--repeats", type=int, default=None, help="timed measurements at least (7; --quick 3)")
    add("--warmup", type=int, default=None, help="steps after the first (2; --quick 1)")
    add("--min-run-time", type=float, default=None, help="blocked_autorange s (1; --quick 0.3)")
    add("--timer", choices=("blocked", "adaptive"), default="blocked", help="Timer's autorange")
    add("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    add("--quick", action="store_true", help="a smoke run; fresh-process first steps: 1st set")
    add("--no-fused-warmup", action="store_true", help="no fresh-process first-step timings")
    add("--json", type=Path, default=None, metavar="PATH", help="write the figures here")
    add("--child-first-step", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.min_run_time = args.min_run_time or (0.3 if args.quick else 1.0)
    if args.repeats < 2:
        parser.error("--repeats: at least 2 (a median and an interquartile range)")
    if unknown := set(args.sets.split(",")) - set(PARAM_SETS):
        parser.error(f"unknown parameter set(s) {sorted(unknown)}; choose from {list(PARAM_SETS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure the chosen rows on the chosen sets; print the tables (and write ``--json``)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.child_first_step is not None:  # in a fresh process: the first two steps of a row
        name, set_name = args.child_first_step
        shapes = PARAM_SETS[set_name][1]()
        optimizer = ROWS[name].build(fresh_params(*make_tensors(shapes, device, torch.float32)))
        first = timed_step(optimizer, device)
        print(json.dumps({"first_step_s": first, "second_step_s": timed_step(optimizer, device)}))
        return 0
    m = machine_info(device, args.threads)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in m.items() if v is not None))
    print(
        f"torch.utils.benchmark.Timer.{args.timer}_autorange: median of at least {args.repeats} "
        f"measurements after {args.warmup} warm-up step(s); weight_decay=0 for every optimizer"
    )
    check = self_check() if device.type == "cpu" else None
    if check is not None:
        known, got = check["case_a_expected"] / MiB, check["case_a"] / MiB
        print(f"peak-memory method checked: a known {known:.2f} MiB measured as {got:.2f} MiB")
    names, notes = pick_rows(args.rows, device)
    arg_values = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = dict(machine=m, args=arg_values, memory_self_check=check, sets={})
    for set_name in args.sets.split(","):
        report["sets"][set_name] = measure_set(set_name, names, notes, args)
        print_set(report["sets"][set_name])
    progress("done")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
