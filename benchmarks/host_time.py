"""Host time of a fused AdaBalance step: the Python around its compiled kernels.

On a GPU the kernels of a step are queued and run asynchronously, and for a model of BERT-base's
size they take about a millisecond, so the time the host spends assembling the step (the 1-D
aliases of the tensors, the concatenated biases and norms, the step counters and the scalars)
is what a step costs. This measures that time on CPU, on a real model's shapes, with the compiled
kernel calls replaced by no-ops (what is left is the Python, not ``torch.compile``'s own
wrapper). Each step gets gradients that are new tensor objects, as after
``zero_grad(set_to_none=True)``.

Run ``python benchmarks/host_time.py --sets bert,gpt2``; ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from _shapes import PARAM_SETS, make_tensors

from adabalance_hf import AdaBalance
from adabalance_hf.optim import _fused


def host_ms(
    params: list[torch.nn.Parameter], grads: list[torch.Tensor], steps: int, amsbound: bool
) -> list[float]:
    """Milliseconds of each of ``steps`` fused steps on ``params``, the kernels no-ops (so the
    parameters do not move)."""
    optimizer = AdaBalance(params, lr=1e-4, fused=True, amsbound=amsbound)
    times = []
    with mock.patch.object(_fused, "run_compiled", lambda *args, **kwargs: None):
        for _ in range(steps + 1):  # the first step creates the state: not timed
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad.detach()  # a new tensor object on the same memory
            started = time.perf_counter()
            optimizer.step()
            times.append((time.perf_counter() - started) * 1e3)
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sets = ", ".join(PARAM_SETS)
    parser.add_argument("--sets", default="bert,gpt2", help=f"comma-separated: {sets}")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per set (50)")
    parser.add_argument("--amsbound", action="store_true", help="with max_exp_avg_sq")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    for name in args.sets.split(","):
        if name not in PARAM_SETS:
            parser.error(f"--sets: unknown set {name!r}; choose from {', '.join(PARAM_SETS)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Python's time: one thread, as the host would spend it
    rows = []
    print("| set | tensors | host ms per step (median) | min | max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.sets.split(","):
        params, grads = make_tensors(PARAM_SETS[name][1](), torch.device("cpu"), torch.float32)
        times = host_ms([torch.nn.Parameter(p) for p in params], grads, args.steps, args.amsbound)
        tensors = len(params)
        median = statistics.median(times)
        rows.append({"set": name, "tensors": tensors, "median_ms": median, "times_ms": times})
        print(f"| {PARAM_SETS[name][0]} | {tensors} | {median:.2f} | {min(times):.2f} | "
              f"{max(times):.2f} |")  # fmt: skip
    torch.set_num_threads(threads)
    if args.json is not None:
        record = {"torch": torch.__version__, "amsbound": args.amsbound, "rows": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
