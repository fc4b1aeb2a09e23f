"""Step time and memory of AdaBalance's execution paths against torch's AdamW.

Run ``python benchmarks/step_speed.py`` (``--help`` for the options). For each parameter set,
built as plain tensors in the real shapes of the model (no download, no transformers):

* BERT-base: embeddings 30522x768, 512x768, 2x768 and their LayerNorm; 12 layers of q/k/v/o
  768x768, FFN 3072x768 and 768x3072, biases and two LayerNorms; the pooler (109,482,240
  parameters in 199 tensors);
* GPT-2 small: wte 50257x768, wpe 1024x768; 12 layers of c_attn 768x2304, c_proj 768x768,
  c_fc 768x3072, c_proj 3072x768, biases and two LayerNorms; ln_f (124,439,808 parameters in
  148 tensors);

it prints one markdown row per optimizer and path: AdaBalance per-tensor (``foreach=False``),
foreach and fused (when the installed AdaBalance has ``fused``), AdamW per-tensor, foreach and
fused, and the reference code's step loop re-implemented in ``_reference_adabalance.py`` (checked
to give the same result as AdaBalance before it is timed). All optimizers run with their default
hyper-parameters except ``weight_decay=0`` everywhere (AdaBalance's default), so AdamW does no
extra decay pass.

How it measures:

* Time: every row starts from a clone of the same initial parameters, with the same gradients
  (random, fixed seed, set once; no optimizer here modifies ``.grad``). Warm-up steps (which
  create the state and, for ``fused``, compile) are followed by ``--repeats`` timed
  ``optimizer.step()`` calls, each timed on its own with ``time.perf_counter`` (CUDA: with
  ``torch.cuda.synchronize()`` before and after); the median is reported, with its ratio to
  ``torch.optim.AdamW(fused=True)`` timed in the same process on the same parameters. One
  optimizer exists at a time; it is freed and ``gc.collect()`` runs before the next row.
* Peak extra memory: one more step after the timed ones, measured by ``_memory.py``. On CPU
  the step runs under ``torch.profiler.profile(profile_memory=True)``; the CPU allocator's
  allocation and free events, sorted by time, are summed and the maximum of the running sum is
  the peak of memory allocated above the state at rest. The method is verified at start-up on
  ops with temporaries of known size (``_memory.self_check``). On CUDA it is
  ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` minus the memory
  allocated at the start. It is also given as a percentage of the parameters' memory.
* Warm-up of the fused path: the first ``fused=True`` AdaBalance step, timed in a fresh
  subprocess with a fresh, empty ``TORCHINDUCTOR_CACHE_DIR`` (cold), then in a second fresh
  subprocess reusing that directory (warm); the second step of each is shown for comparison.
* State bytes per parameter: every tensor in ``optimizer.state`` after a step, summed and divided
  by the number of parameters, for fp32 parameters, and for bf16 parameters with
  ``AdaBalance(..., master_weights=True)`` when that option exists.

* Disturbance: the CPU time used by every other process (and stolen by the hypervisor) during
  each row's timed steps, from ``/proc/stat`` minus this process's own time, is recorded. Before
  each row the script waits (``--quiet-wait`` seconds at most) for a quiet half second; a row
  whose timed steps saw more than 0.25 CPUs of other work is timed again (``--retries``) and the
  least disturbed attempt is kept; a table whose worst kept row is still above 0.25 is flagged.
  On 2 cores a competing process slows the OpenMP-parallel kernels by up to 10x.

``--json PATH`` writes the same figures to a file (all step times, minimum, disturbance).

Memory: a set's parameters, gradients and initial copy take 3x its parameter memory, an optimizer
about 3x more plus its temporaries; a full run peaked at 4.3 to 5.1 GB of RSS here (2 cores,
torch 2.13 CPU), and took about 2 minutes on an idle machine (``--quick``: about 1 minute).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _memory import peak_extra_bytes, self_check
from _reference_adabalance import ReferenceAdaBalance

from adabalance_hf import AdaBalance

MiB = 1024**2
SEED = 0
# Other processes using more CPUs than this during a row's timed steps disturb it (2 cores here):
# the row is timed again, up to --retries times, after waiting for a quiet moment.
DISTURBED = 0.25
_START = time.perf_counter()


def progress(message: str) -> None:
    """One line of progress on stderr (stdout carries only the report)."""
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Parameter sets


def _layer_norm(name: str, hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{name}.weight", (hidden,)), (f"{name}.bias", (hidden,))]


def _linear(name: str, out_features: int, in_features: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{name}.weight", (out_features, in_features)), (f"{name}.bias", (out_features,))]


def bert_base_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of ``bert-base-uncased``'s parameters (``BertModel`` with pooler)."""
    h, ffn = 768, 3072
    shapes = [
        ("embeddings.word_embeddings.weight", (30522, h)),
        ("embeddings.position_embeddings.weight", (512, h)),
        ("embeddings.token_type_embeddings.weight", (2, h)),
        *_layer_norm("embeddings.LayerNorm", h),
    ]
    for i in range(12):
        layer = f"encoder.layer.{i}"
        for proj in ("query", "key", "value"):
            shapes += _linear(f"{layer}.attention.self.{proj}", h, h)
        shapes += _linear(f"{layer}.attention.output.dense", h, h)
        shapes += _layer_norm(f"{layer}.attention.output.LayerNorm", h)
        shapes += _linear(f"{layer}.intermediate.dense", ffn, h)
        shapes += _linear(f"{layer}.output.dense", h, ffn)
        shapes += _layer_norm(f"{layer}.output.LayerNorm", h)
    shapes += _linear("pooler.dense", h, h)
    return shapes


def gpt2_small_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of ``gpt2``'s parameters (``GPT2Model``; Conv1D weights are in x out)."""
    h = 768
    shapes = [("wte.weight", (50257, h)), ("wpe.weight", (1024, h))]
    for i in range(12):
        block = f"h.{i}"
        shapes += _layer_norm(f"{block}.ln_1", h)
        shapes += [
            (f"{block}.attn.c_attn.weight", (h, 3 * h)),
            (f"{block}.attn.c_attn.bias", (3 * h,)),
        ]
        shapes += [(f"{block}.attn.c_proj.weight", (h, h)), (f"{block}.attn.c_proj.bias", (h,))]
        shapes += _layer_norm(f"{block}.ln_2", h)
        shapes += [(f"{block}.mlp.c_fc.weight", (h, 4 * h)), (f"{block}.mlp.c_fc.bias", (4 * h,))]
        shapes += [(f"{block}.mlp.c_proj.weight", (4 * h, h)), (f"{block}.mlp.c_proj.bias", (h,))]
    shapes += _layer_norm("ln_f", h)
    return shapes


PARAM_SETS: dict[str, tuple[str, Callable[[], list[tuple[str, tuple[int, ...]]]]]] = {
    "bert": ("BERT-base", bert_base_shapes),
    "gpt2": ("GPT-2 small", gpt2_small_shapes),
}


def make_tensors(
    shapes: list[tuple[str, tuple[int, ...]]], device: torch.device, dtype: torch.dtype
) -> tuple[list[Tensor], list[Tensor]]:
    """Initial parameters (std 0.02, biases and LayerNorms too) and gradients (std 1e-2)."""
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    params, grads = [], []
    for _, shape in shapes:
        params.append((torch.randn(shape, generator=gen) * 0.02).to(device, dtype))
        grads.append((torch.randn(shape, generator=gen) * 1e-2).to(device, dtype))
    return params, grads


def fresh_params(init: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """Leaf parameters cloned from ``init``, each with its (shared, read-only) gradient."""
    params = []
    for p0, g in zip(init, grads, strict=True):
        p = p0.clone().requires_grad_(True)
        p.grad = g
        params.append(p)
    return params


# ---------------------------------------------------------------------------------------------
# Rows


def adabalance_options() -> set[str]:
    return set(inspect.signature(AdaBalance).parameters)


@dataclass
class RowSpec:
    optimizer: str
    path: str
    make: Callable[[list[Tensor]], torch.optim.Optimizer] | None
    unavailable: str | None = None


def row_specs() -> list[RowSpec]:
    fused_ok = "fused" in adabalance_options()
    return [
        RowSpec("AdaBalance", "per-tensor", lambda ps: AdaBalance(ps, foreach=False)),
        RowSpec("AdaBalance", "foreach", lambda ps: AdaBalance(ps, foreach=True)),
        RowSpec(
            "AdaBalance",
            "fused",
            (lambda ps: AdaBalance(ps, fused=True)) if fused_ok else None,
            None if fused_ok else "AdaBalance has no `fused` option in this version",
        ),
        RowSpec(
            "AdamW", "per-tensor", lambda ps: torch.optim.AdamW(ps, weight_decay=0.0, foreach=False)
        ),
        RowSpec(
            "AdamW", "foreach", lambda ps: torch.optim.AdamW(ps, weight_decay=0.0, foreach=True)
        ),
        RowSpec("AdamW", "fused", lambda ps: torch.optim.AdamW(ps, weight_decay=0.0, fused=True)),
        RowSpec("reference code", "one loop, temporaries", lambda ps: ReferenceAdaBalance(ps)),
    ]


@dataclass
class RowResult:
    optimizer: str
    path: str
    median_ms: float | None = None
    min_ms: float | None = None
    other_cpu_load: float | None = None
    attempts: int = 0
    times_ms: list[float] = field(default_factory=list)
    ratio_vs_adamw_fused: float | None = None
    peak_extra_bytes: int | None = None
    peak_extra_pct_of_params: float | None = None
    state_bytes_per_param: float | None = None
    error: str | None = None


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (all keys, 0-dim step counters included)."""
    total = 0
    for param_state in optimizer.state.values():
        for value in param_state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _busy_cpu_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine (all processes, steal included), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its waited-for children (the warm-up subprocesses)."""
    return sum(os.times()[:4])


class OtherLoad:
    """Average number of CPUs kept busy by everything but this process over a time span."""

    def __enter__(self) -> OtherLoad:
        self.busy0, self.own0 = _busy_cpu_seconds(), _own_cpu_seconds()
        self.wall0 = time.perf_counter()
        self.cpus: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        busy1, own1 = _busy_cpu_seconds(), _own_cpu_seconds()
        wall = time.perf_counter() - self.wall0
        if self.busy0 is not None and busy1 is not None and wall > 0:
            self.cpus = max(0.0, (busy1 - self.busy0) - (own1 - self.own0)) / wall


def wait_for_quiet(max_wait_s: float, window_s: float = 0.5) -> float | None:
    """Wait (at most ``max_wait_s``) for a ``window_s`` span in which other processes stay
    under ``DISTURBED`` CPUs; return the load of the last window (None where unmeasurable)."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        with OtherLoad() as load:
            time.sleep(window_s)
        if load.cpus is None or load.cpus <= DISTURBED or time.perf_counter() >= deadline:
            return load.cpus


def timed_step(optimizer: torch.optim.Optimizer, device: torch.device) -> float:
    """Seconds of one ``optimizer.step()``, synchronized on CUDA."""
    synchronize(device)
    start = time.perf_counter()
    optimizer.step()
    synchronize(device)
    return time.perf_counter() - start


def run_row(
    spec: RowSpec,
    init: list[Tensor],
    grads: list[Tensor],
    device: torch.device,
    warmup: int,
    repeats: int,
    retries: int,
    quiet_wait_s: float,
) -> RowResult:
    result = RowResult(spec.optimizer, spec.path)
    if spec.make is None:
        result.error = spec.unavailable
        return result
    numel = sum(p.numel() for p in init)
    param_bytes = sum(p.numel() * p.element_size() for p in init)
    params = fresh_params(init, grads)
    optimizer = None
    try:
        optimizer = spec.make(params)
        # The fused path compiles during its first step(s): give it at least two warm-up steps.
        for _ in range(max(warmup, 2 if spec.path == "fused" else 1)):
            timed_step(optimizer, device)
        for attempt in range(1 + retries):
            wait_for_quiet(quiet_wait_s)
            with OtherLoad() as load:
                times = [timed_step(optimizer, device) for _ in range(repeats)]
            result.attempts = attempt + 1
            if load.cpus is None:  # no /proc/stat: keep the first attempt, unjudged
                result.times_ms = [t * 1e3 for t in times]
                break
            if result.other_cpu_load is None or load.cpus < result.other_cpu_load:
                result.other_cpu_load, result.times_ms = load.cpus, [t * 1e3 for t in times]
            if load.cpus <= DISTURBED:
                break
        result.median_ms = statistics.median(result.times_ms)
        result.min_ms = min(result.times_ms)
        gc.collect()
        result.peak_extra_bytes = peak_extra_bytes(optimizer.step, device)
        result.peak_extra_pct_of_params = 100.0 * result.peak_extra_bytes / param_bytes
        result.state_bytes_per_param = state_bytes(optimizer) / numel
    except Exception as exc:  # a path that is missing or broken in this version: report it
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        del optimizer, params
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------
# Checks


def check_reference(device: torch.device) -> None:
    """The reference loop must give AdaBalance's result (float64, a few steps, lr changed)."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(7, 5), (11,), (3, 4, 2)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in shapes]
    steps = [[torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in shapes]]
    steps += [[torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in shapes]]
    results = []
    for cls in (ReferenceAdaBalance, AdaBalance):
        params = [p.clone().requires_grad_(True) for p in init]
        opt = cls(params, lr=1e-2, weight_decay=1e-2)
        for t in range(6):
            if t == 3:
                opt.param_groups[0]["lr"] = 5e-3
            for p, g in zip(params, steps[t % 2], strict=True):
                p.grad = g
            opt.step()
        results.append(params)
    for ref, ours in zip(*results, strict=True):
        torch.testing.assert_close(ref, ours, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Fused warm-up, in fresh subprocesses


def child_first_fused_step(set_name: str, device: torch.device) -> dict[str, float]:
    """Run in a subprocess: time the first two steps of ``AdaBalance(fused=True)``."""
    init, grads = make_tensors(PARAM_SETS[set_name][1](), device, torch.float32)
    params = fresh_params(init, grads)
    del init
    optimizer = AdaBalance(params, fused=True)
    first = timed_step(optimizer, device)
    second = timed_step(optimizer, device)
    return {"first_step_s": first, "second_step_s": second}


def fused_warmup(set_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """First fused step with a cold, then a warm inductor cache, each in a fresh process."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="adabalance-inductor-") as cache_dir:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
        for label in ("cold", "warm"):
            wait_for_quiet(args.quiet_wait)
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child-first-fused-step",
                set_name,
                "--threads",
                str(args.threads),
                "--device",
                args.device,
            ]
            with OtherLoad() as load:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                out[label] = {"error": tail[:200]}
                break
            out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
            out[label]["other_cpu_load"] = load.cpus
    return out


# ---------------------------------------------------------------------------------------------
# State bytes with bf16 parameters and master weights


def bf16_master_state_bytes(
    shapes: list[tuple[str, tuple[int, ...]]], device: torch.device
) -> float | str:
    """State bytes per parameter of ``AdaBalance(bf16 params, master_weights=True)``."""
    if "master_weights" not in adabalance_options():
        return "n/a (AdaBalance has no `master_weights` option in this version)"
    init, grads = make_tensors(shapes, device, torch.bfloat16)
    params = fresh_params(init, grads)
    del init
    optimizer = None
    try:
        optimizer = AdaBalance(params, master_weights=True)
        optimizer.step()
        return state_bytes(optimizer) / sum(p.numel() for p in params)
    except Exception as exc:
        return f"n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    finally:
        del optimizer, params, grads
        gc.collect()


# ---------------------------------------------------------------------------------------------
# Report


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(title: str, numel: int, n_tensors: int, param_bytes: int, rows: list[RowResult]):
    print(
        f"\n### {title}: {numel:,} parameters in {n_tensors} tensors, {param_bytes / MiB:.1f} MiB"
    )
    print()
    print(
        "| optimizer | path | median ms | ratio vs AdamW fused | peak extra MiB "
        "| % of param memory |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        peak = None if r.peak_extra_bytes is None else r.peak_extra_bytes / MiB
        ratio = _fmt(r.ratio_vs_adamw_fused, ".2f")
        ratio = ratio + "x" if r.ratio_vs_adamw_fused is not None else ratio
        print(
            f"| {r.optimizer} | {r.path} | {_fmt(r.median_ms, '.1f')} | {ratio} | "
            f"{_fmt(peak, '.1f')} | {_fmt(r.peak_extra_pct_of_params, '.1f')} |"
        )
    print()
    for r in rows:
        if r.error:
            print(f"- {r.optimizer} {r.path}: not measured ({r.error})")
    loads = [(r.other_cpu_load, r) for r in rows if r.other_cpu_load is not None]
    if loads:
        worst, row = max(loads, key=lambda x: x[0])
        flag = " (timings disturbed: rerun on an idle machine)" if worst > DISTURBED else ""
        retimed = [f"{r.optimizer} {r.path} x{r.attempts}" for r in rows if r.attempts > 1]
        print(
            f"- CPU used by other processes during the kept timed steps: at most {worst:.2f} "
            f"CPUs ({row.optimizer} {row.path}){flag}"
            + (f"; timed again after a disturbance: {', '.join(retimed)}" if retimed else "")
        )


def describe_warmup(warm: dict[str, Any]) -> str:
    parts = []
    for label in ("cold", "warm"):
        entry = warm.get(label)
        if entry is None:
            continue
        if "error" in entry:
            parts.append(f"{label} cache: failed ({entry['error']})")
        else:
            load = entry.get("other_cpu_load")
            flag = (
                f", disturbed: {load:.2f} CPUs used by others" if load and load > DISTURBED else ""
            )
            parts.append(
                f"{label} cache {entry['first_step_s']:.2f} s "
                f"(then {entry['second_step_s'] * 1e3:.0f} ms{flag})"
            )
    return "; ".join(parts) if parts else "n/a"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="bert,gpt2", help="comma-separated: bert, gpt2")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 7)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    parser.add_argument(
        "--retries",
        type=int,
        default=None,
        help=f"re-time a row disturbed by other processes (> {DISTURBED} CPUs) up to this many "
        "times, keeping the least disturbed attempt (default 2; --quick 1)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="seconds to wait at most for other processes to go quiet before timing a row "
        "(default 10; --quick 5)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda if available)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 timed steps, 1 warm-up, fused warm-up probe on the first set only: a smoke run",
    )
    parser.add_argument(
        "--no-fused-warmup",
        action="store_true",
        help="skip the cold/warm first-fused-step subprocesses",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="write figures here"
    )
    parser.add_argument("--child-first-fused-step", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.retries is None:
        args.retries = 1 if args.quick else 2
    if args.quiet_wait is None:
        args.quiet_wait = 5.0 if args.quick else 10.0
    unknown = set(args.sets.split(",")) - set(PARAM_SETS)
    if unknown:
        parser.error(
            f"unknown parameter set(s) {sorted(unknown)}; choose from {sorted(PARAM_SETS)}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.child_first_fused_step is not None:
        print(json.dumps(child_first_fused_step(args.child_first_fused_step, device)))
        return 0

    machine = machine_info(device, args.threads)
    print(
        f"machine: {machine['cpu']} ({machine['cpu_count']} logical CPUs, "
        f"{machine['cpu_capability']}), torch.set_num_threads({args.threads}), "
        f"torch {machine['torch']}, Python {machine['python']}, device {device}"
        + (f" ({machine['gpu']})" if "gpu" in machine else "")
    )
    print(
        f"{args.repeats} timed steps after {args.warmup} warm-up step(s) (fused: at least 2); "
        "median per row; weight_decay=0 for every optimizer"
    )
    try:
        print(f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]}")
    except OSError:
        pass
    memory_check = self_check() if device.type == "cpu" else None
    if memory_check is not None:
        rss, expected = memory_check["case_a_rss"], memory_check["case_a_expected"]
        print(
            f"peak-memory method checked: a known peak of {expected / MiB:.2f} MiB measured as "
            f"{memory_check['case_a'] / MiB:.2f} MiB by the profiler"
            + (f", {rss / MiB:.2f} MiB by the RSS high-water mark" if rss is not None else "")
            + f"; in-place ops {memory_check['case_c']} bytes"
        )
    check_reference(device)
    specs = row_specs()
    report: dict[str, Any] = {
        "machine": machine,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "memory_self_check": memory_check,
        "sets": {},
    }

    for set_name in args.sets.split(","):
        title, shapes_fn = PARAM_SETS[set_name]
        shapes = shapes_fn()
        progress(f"{set_name}: building parameters and gradients")
        init, grads = make_tensors(shapes, device, torch.float32)
        numel = sum(p.numel() for p in init)
        param_bytes = numel * 4
        by_key = {}
        for spec in specs:
            progress(f"{set_name}: {spec.optimizer} {spec.path}")
            by_key[(spec.optimizer, spec.path)] = run_row(
                spec,
                init,
                grads,
                device,
                args.warmup,
                args.repeats,
                args.retries,
                args.quiet_wait,
            )
        baseline = by_key[("AdamW", "fused")].median_ms
        rows = list(by_key.values())
        for r in rows:
            if r.median_ms is not None and baseline:
                r.ratio_vs_adamw_fused = r.median_ms / baseline
        del init, grads
        gc.collect()

        progress(f"{set_name}: first fused step in fresh processes, bf16 state")
        fused_spec = next(s for s in specs if s.optimizer == "AdaBalance" and s.path == "fused")
        if fused_spec.make is None:
            warm: dict[str, Any] = {"skipped": fused_spec.unavailable}
        elif args.no_fused_warmup:
            warm = {"skipped": "--no-fused-warmup"}
        elif args.quick and set_name != args.sets.split(",")[0]:
            warm = {"skipped": "--quick measures it on the first set only"}
        else:
            warm = fused_warmup(set_name, args)
        bf16 = bf16_master_state_bytes(shapes, device)

        print_table(title, numel, len(shapes), param_bytes, rows)
        print(
            "- first fused AdaBalance step (fresh process): "
            + (f"n/a ({warm['skipped']})" if "skipped" in warm else describe_warmup(warm))
        )
        fp32_state = by_key[("AdaBalance", "foreach")].state_bytes_per_param
        adamw_state = by_key[("AdamW", "fused")].state_bytes_per_param
        bf16_text = bf16 if isinstance(bf16, str) else f"{bf16:.2f}"
        print(
            f"- optimizer state, bytes per parameter: AdaBalance fp32 params "
            f"{_fmt(fp32_state, '.2f')}; AdaBalance bf16 params + master weights {bf16_text}; "
            f"(AdamW fp32 params {_fmt(adamw_state, '.2f')})"
        )
        report["sets"][set_name] = {
            "title": title,
            "numel": numel,
            "tensors": len(shapes),
            "param_bytes": param_bytes,
            "rows": [asdict(r) for r in rows],
            "fused_first_step": warm,
            "state_bytes_per_param": {
                "adabalance_fp32": fp32_state,
                "adabalance_bf16_master_weights": bf16,
                "adamw_fp32": adamw_state,
            },
        }

    progress("done")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
