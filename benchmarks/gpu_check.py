"""One command that checks AdaBalance on one CUDA GPU and writes a JSON and a markdown report.

On the lent GPU (at most 7.8 minutes by construction, see below; ``--quick`` about half)::

    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --out_dir benchmarks/results

It needs torch with CUDA, triton (the fused paths compile through it), transformers and this
package (``pip install -e .``); torchao is optional (its ``AdamW8bit`` row is skipped, not failed,
where it does not import). No download: the GPT-2 is built from a config and trained on the bytes
of WikiText-2 from ``--wikitext_dir`` (default ``../shared/data/wikitext-2``), or on random
Markov-chain tokens where that folder is missing. Sections, with their time budgets (``--quick``:
half) and, in brackets, an estimate for an H200 (no GPU has run this yet: the first run's
``wall_s`` per section replaces these):

* ``parity`` 80 s [30-60 s, most of it Triton compiles]: every path (per-tensor, foreach,
  fused, AdaBalance8bit fused and eager) against the float64 oracle of ``tests/_oracle.py``, three
  configurations, 300 steps (``_gpu_check_parity.py`` states the bounds);
* ``bf16_master`` 40 s [15-30 s]: bf16 parameters, fp32 master weights, every path;
* ``fp16_grad_scaler`` 35 s [10-25 s]: fp16 parameters under ``torch.amp.GradScaler`` with
  inf/nan steps, and a small fp16 MLP trained under it;
* ``speed`` 210 s [90-180 s, most of it compiles, torchao's once per shape]: step time (CUDA
  events, median of 10) and peak memory of AdaBalance fused/foreach, AdaBalance8bit and
  AdaBalance4bit fused, AdamW fused/foreach, torchao AdamW8bit on BERT-base, GPT-2 small and
  TinyLlama-1.1B shapes and a LoRA adapter of Llama-2-7B (``_gpu_check_speed.py``);
* ``gpt2_trainer`` 50 s [20-40 s]: a bf16 GPT-2 trained for 40 steps by ``AdaBalanceTrainer``
  (``adabalance_fused``, ``adabalance_8bit``, ``adabalance_4bit``): the loss falls, nothing is NaN.

On CUDA each section runs in a process of its own (``--no-isolate``: all in this one), so a CUDA
error or a hang loses that section only; an item that would start past its section's budget is
recorded as ``timeout``, the process is killed 20 s after it, and the whole run stops starting
sections after ``--total_budget_s`` (440). Failures and errors are recorded, never raised; the
JSON and the markdown are rewritten after each section. Exit status: 0 when every check passed
or was skipped for a stated reason (an optional package), 1 otherwise, 2 when it cannot run here.
Without CUDA it stops at once (status 2) unless given ``--device cpu --quick``: every section on
tiny shapes on the CPU, the compiled paths in the fp32 parity and speed rows only (one compile of
each kernel), torchao's step uncompiled; 35 s with a warm inductor cache to 80 s on two busy
cores, most of it the two compiles (``tests/test_gpu_check.py`` runs it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu_check_core import OK_STATUSES, REPO, Context, Recorder
from _gpu_check_report import markdown

#: name -> (module:function, time budget in seconds)
SECTIONS: dict[str, tuple[str, float]] = {
    "parity": ("_gpu_check_parity:parity", 80.0),
    "bf16_master": ("_gpu_check_parity:bf16_master", 40.0),
    "fp16_grad_scaler": ("_gpu_check_parity:fp16_grad_scaler", 35.0),
    "speed": ("_gpu_check_speed:speed", 210.0),
    "gpt2_trainer": ("_gpu_check_train:gpt2_trainer", 50.0),
}
KILL_GRACE_S = 20.0
NO_CUDA = (
    "gpu_check: no CUDA device here (torch {version}, torch.cuda.is_available() is False). This "
    "check is meant for a CUDA GPU; to exercise it on the CPU run: "
    "python benchmarks/gpu_check.py --device cpu --quick"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--out_dir", type=Path, default=REPO / "benchmarks" / "results", help="report folder")
    add("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --quick)")
    add("--quick", action="store_true", help="smaller variant of every section")
    add("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    add("--wikitext_dir", type=Path, default=REPO.parent / "shared" / "data" / "wikitext-2")
    add("--total_budget_s", type=float, default=440.0, help="no section starts after this")
    add("--isolate", action=argparse.BooleanOptionalAction, default=None,
        help="each section in its own process (default: on CUDA)")  # fmt: skip
    add("--threads", type=int, default=1, help="torch.set_num_threads on CPU (1: tiny shapes)")
    add("--child", nargs=3, metavar=("SECTION", "RESULT", "DEADLINE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if unknown := set(args.sections.split(",")) - set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    return args


def can_run(args: argparse.Namespace) -> str | None:
    """Why this machine cannot run the check as asked, or None."""
    device = torch.device(args.device)
    if device.type == "cpu":
        if not args.quick:
            return "gpu_check: on the CPU only --quick runs (tiny shapes): add --quick"
        return None
    if device.type != "cuda":
        return f"gpu_check: --device {args.device}: use cuda, cuda:N or cpu"
    if not torch.cuda.is_available():
        return NO_CUDA.format(version=torch.__version__)
    return None


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception as error:  # optional packages; a broken one is reported, not raised
        return f"not available ({type(error).__name__})"


def machine_info(device: torch.device) -> dict[str, Any]:
    """Device, versions and host of this run."""
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(device).total_memory / 1024**3
        if cuda
        else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": _version("triton") if cuda else None,
        "transformers": _version("transformers"),
        "torchao": _version("torchao"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def run_section_here(name: str, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """Run section ``name`` here until ``deadline`` (``time.monotonic()``); its result."""
    target, budget = SECTIONS[name]
    module, function = target.split(":")
    ctx = Context(torch.device(args.device), args.quick, deadline, args.wikitext_dir)
    rec = Recorder(ctx)
    begin = time.perf_counter()
    error = None
    try:
        getattr(importlib.import_module(module), function)(ctx, rec)
    except Exception as exc:  # the section's own code: recorded, the run goes on
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-6000:]}"
    return {
        "budget_s": budget,
        "elapsed_s": time.perf_counter() - begin,
        "error": error,
        "checks": rec.checks,
        "tables": rec.tables,
        "notes": rec.notes,
        "item_seconds": rec.item_seconds,
    }


def run_section_isolated(name: str, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """Run section ``name`` in a child process, killed ``KILL_GRACE_S`` after ``deadline``."""
    begin = time.perf_counter()
    seconds = deadline - time.monotonic()  # CLOCK_MONOTONIC: the child's clock too
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device]
        cmd += ["--wikitext_dir", str(args.wikitext_dir), "--threads", str(args.threads)]
        cmd += ["--quick"] * args.quick + ["--child", name, str(result_path), repr(deadline)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=seconds + KILL_GRACE_S, check=False)  # fmt: skip
            tail = (proc.stdout + proc.stderr)[-4000:]
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"") + (exc.stderr or b"")
            tail = out.decode(errors="replace")[-4000:] if isinstance(out, bytes) else str(out)
            return _broken(name, begin, f"killed after {seconds + KILL_GRACE_S:.0f} s", tail)
        if result_path.is_file():
            return json.loads(result_path.read_text())
    return _broken(name, begin, f"child exited with status {proc.returncode}", tail)


def _broken(name: str, begin: float, why: str, tail: str) -> dict[str, Any]:
    return {
        "budget_s": SECTIONS[name][1],
        "elapsed_s": time.perf_counter() - begin,
        "error": f"{why}; its output ended with:\n{tail}",
        "checks": [],
        "tables": {},
        "notes": [],
        "status": "timeout" if why.startswith(("killed", "not started")) else "error",
    }


def section_status(result: dict[str, Any]) -> str:
    """``pass`` if the section ran and every check passed or was skipped, else why not."""
    if "status" in result:
        return result["status"]
    if result["error"]:
        return "error"
    statuses = {c["status"] for c in result["checks"]}
    if not statuses or statuses - set(OK_STATUSES):
        return "timeout" if "timeout" in statuses else "fail"
    return "pass"


def write_reports(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "gpu_check.json", out_dir / "gpu_check.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections; write the reports; 0 if every check passed."""
    args = parse_args(argv)
    if why := can_run(args):
        print(why, file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.child is not None:
        name, result_path, deadline = args.child
        result = run_section_here(name, args, float(deadline))
        Path(result_path).write_text(json.dumps(result, default=str))
        return 0
    isolate = device.type == "cuda" if args.isolate is None else args.isolate
    start = time.monotonic()
    report: dict[str, Any] = {
        "machine": machine_info(device),
        "args": {k: str(v) for k, v in vars(args).items() if k != "child"},
        "isolated": isolate,
        "sections": {},
    }
    for name in args.sections.split(","):
        budget = SECTIONS[name][1] * (0.5 if args.quick and device.type == "cuda" else 1.0)
        begin = time.monotonic()
        left = args.total_budget_s - (begin - start)
        print(f"[{time.monotonic() - start:6.1f} s] {name} (budget {budget:.0f} s)", flush=True)
        if left < 10:
            result = _broken(name, time.perf_counter(), "not started: --total_budget_s spent", "")
        else:
            run = run_section_isolated if isolate else run_section_here
            result = run(name, args, begin + min(budget, left))
        result["wall_s"] = time.monotonic() - begin  # with the child's start, if isolated
        result["status"] = section_status(result)
        report["sections"][name] = result
        report["elapsed_s"] = time.monotonic() - start
        report["passed"] = all(s["status"] == "pass" for s in report["sections"].values())
        json_path, md_path = write_reports(report, args.out_dir)
        passed = sum(c["status"] == "pass" for c in result["checks"])
        print(f"    {result['status']}: {passed}/{len(result['checks'])} checks passed, "
              f"{result['wall_s']:.1f} s", flush=True)  # fmt: skip
        for check in result["checks"]:
            if check["status"] not in OK_STATUSES:
                print(f"    {check['status']}: {check['name']} {check.get('detail') or ''}")
        if result["error"]:
            print("    error: " + result["error"].splitlines()[0], flush=True)
    print(f"wrote {json_path} and {md_path}; {'all passed' if report['passed'] else 'FAILED'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
