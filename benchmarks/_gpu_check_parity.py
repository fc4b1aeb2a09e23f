"""Sections ``parity``, ``bf16_master`` and ``fp16_grad_scaler`` of ``gpu_check.py``.

Each runs a seeded scenario on the device, side by side with the float64 oracle of
``tests/_oracle.py`` (which is written from the spec alone) fed exactly the gradients the
optimizer saw: two param groups with their own hyper-parameters, a third added mid-run, a
learning-rate change mid-run, tensors without a gradient on some steps, gradients pulling towards
a target. Tensors are 2-D and 3-D ones of 8,192 to 18,432 elements (8-bit state) and 1-D ones
(fp32 state under ``AdaBalance8bit`` too).

Bounds: fp32-state paths within ``FP32_BOUND`` relative error (infinity norm) of the oracle in
every parameter (the fp32 master copy for bf16/fp16) and state. 8-bit state is rounded every step
(3 mantissa bits: a stored value is off by up to 1/16 of itself), so ``AdaBalance8bit`` is held
to the distance it moved: ``max|p - p_oracle| / max|p_oracle - p_0|`` per tensor at most
``MOVE_BOUND_8BIT``, its decoded states within ``STATE_BOUND_8BIT`` of the oracle's in the 2-norm
(``||state - state_oracle|| / ||state_oracle||``), and its fp32-state tensors within
``FP32_BOUND``. Measured on CPU (300 fp32 steps; 200 bf16; 60 fp16): at most 0.12 of the distance
moved and 0.19 of the state; the bounds leave room for other seeds and devices.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from _gpu_check_core import PATHS, Context, Recorder, finite, is_8bit
from _oracle import OracleAdaBalance, relative_error
from torch import Tensor

from adabalance_hf.optim._blockwise_state import decoded_state, is_quantized_state

FP32_BOUND = 1e-5
MOVE_BOUND_8BIT = 0.25
STATE_BOUND_8BIT = 0.35
STATE_KEYS = {"exp_avg": "m", "exp_avg_sq": "v", "exp_avg_lr": "s"}

GROUPS: list[tuple[list[tuple[int, ...]], dict[str, Any]]] = [
    ([(64, 256), (256,)], {}),
    ([(2, 32, 128), (5,)], {"lr": 2e-3, "beta3": 0.99, "final_lr": 0.05, "gamma": 1e-2}),
    ([(48, 384), (1,)], {"lr": 5e-3, "betas": (0.8, 0.99)}),
]
DEFAULTS: dict[str, Any] = dict(
    lr=1e-3, betas=(0.9, 0.999), beta3=0.999, final_lr=0.1, gamma=1e-3, eps=1e-8, weight_decay=0.0
)
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything_on": {
        "amsbound": True,
        "weight_decay": 0.05,
        "decoupled_weight_decay": True,
        "maximize": True,
        "gamma": 0.01,
    },
    "fast_bounds": {"gamma": 0.05, "beta3": 0.9, "final_lr": 0.02},
}


def _no_grad(step: int, index: int) -> bool:
    return (step + 3 * index) % 7 == 0


def run_scenario(
    path: str, config: dict[str, Any], dtype: torch.dtype, device: torch.device, steps: int
) -> dict[str, Any]:
    """The scenario on one path; the worst errors against the oracle (see the module's doc)."""
    cls, path_kwargs, _ = PATHS[path]
    gen = torch.Generator().manual_seed(0)

    def randn(shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device)

    live = [[randn(s).to(dtype).requires_grad_() for s in shapes] for shapes, _ in GROUPS]
    targets = [[randn(s) for s in shapes] for shapes, _ in GROUPS]
    scales = [
        [10.0 ** (-3 * torch.rand(s, generator=gen, dtype=torch.float64)).to(device) for s in sh]
        for sh, _ in GROUPS
    ]
    initial = [[p.detach().double().clone() for p in group] for group in live]
    hypers = [{**DEFAULTS, **config, **over} for _, over in GROUPS]
    sign = -1.0 if config.get("maximize") else 1.0
    opt = cls([{"params": live[g], **GROUPS[g][1]} for g in range(2)], **config, **path_kwargs)
    oracle = OracleAdaBalance()
    for g in range(2):
        oracle.add_group(live[g], hypers[g]["lr"])
    active, late, lr_change = 2, steps // 3, steps // 2
    for step in range(steps):
        if step == late:
            opt.add_param_group({"params": live[2], **GROUPS[2][1]})
            oracle.add_group(live[2], hypers[2]["lr"])
            active = 3
        if step == lr_change:
            for g in range(active):
                hypers[g]["lr"] *= 0.3
                opt.param_groups[g]["lr"] = hypers[g]["lr"]
        for g in range(active):
            grads: list[Tensor | None] = []
            for k, p in enumerate(live[g]):
                if _no_grad(step, k):
                    p.grad = None
                    grads.append(None)
                    continue
                pull = 0.5 * (p.detach().double() - targets[g][k])
                p.grad = (sign * (randn(p.shape) * scales[g][k] + pull)).to(dtype)
                grads.append(p.grad.double())
            oracle.step(g, grads, hypers[g])
        opt.step()
    return compare(opt, [p for group in live for p in group], oracle, initial)


def _l2_error(actual: Tensor, expected: Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in the 2-norm (0 where both are zero)."""
    norm = expected.norm().item()
    diff = (actual.double() - expected).norm().item()
    return diff / norm if norm > 0 else diff


def compare(
    opt: torch.optim.Optimizer,
    params: list[Tensor],
    oracle: OracleAdaBalance,
    initial: list[list[Tensor]],
) -> dict[str, Any]:
    """Worst errors of ``opt``'s parameters and state against ``oracle``'s, split by state kind.

    Returns ``fp32_state`` (max relative error over parameters and states of the tensors with
    fp32 state), ``8bit_move`` and ``8bit_state`` (tensors with 8-bit state; ``None`` if there
    are none), ``master_rounding_ok`` and ``finite``.
    """
    refs = [t for group in oracle.groups for t in group.tensors]
    inits = [t for group in initial for t in group]
    out: dict[str, Any] = {"fp32_state": 0.0, "8bit_move": None, "8bit_state": None}
    out["master_rounding_ok"], out["finite"] = True, True
    for p, ref, p0 in zip(params, refs, inits, strict=True):
        state = opt.state[p]
        value = state.get("master_param", p.detach())
        if "master_param" in state:
            out["master_rounding_ok"] &= bool(torch.equal(p.detach(), value.to(p.dtype)))
        states = {key: decoded_state(state, key) for key in STATE_KEYS}
        out["finite"] &= finite([value, *states.values()])
        if is_quantized_state(state):
            moved = (ref.param - p0).abs().max().item()
            move = (value.double() - ref.param).abs().max().item() / max(moved, 1e-30)
            out["8bit_move"] = max(out["8bit_move"] or 0.0, move)
            errs = [_l2_error(states[k], getattr(ref, a)) for k, a in STATE_KEYS.items()]
            out["8bit_state"] = max(out["8bit_state"] or 0.0, *errs)
            continue
        errs = [relative_error(value, ref.param)]
        errs += [relative_error(states[k], getattr(ref, a)) for k, a in STATE_KEYS.items()]
        out["fp32_state"] = max(out["fp32_state"], *errs)
        if int(state["step"].item()) != ref.step:
            out["fp32_state"] = float("inf")
    return out


def record_errors(rec: Recorder, name: str, path: str, errors: dict[str, Any]) -> None:
    """The checks of one scenario run."""
    rec.check(f"{name}: finite", errors["finite"])
    rec.check(f"{name}: fp32-state tensors vs oracle", errors["fp32_state"] <= FP32_BOUND,
              errors["fp32_state"], FP32_BOUND)  # fmt: skip
    if is_8bit(path):
        move, state = errors["8bit_move"], errors["8bit_state"]
        have = move is not None
        why = "" if have else "no tensor got 8-bit state"
        ok = have and move <= MOVE_BOUND_8BIT
        rec.check(f"{name}: 8-bit tensors, error / distance moved", ok, move, MOVE_BOUND_8BIT, why)
        rec.check(f"{name}: 8-bit tensors, decoded state vs oracle",
                  have and state <= STATE_BOUND_8BIT, state, STATE_BOUND_8BIT)  # fmt: skip
    rec.row("errors", {"run": name, **{k: v for k, v in errors.items() if k != "finite"}})


def _paths(ctx: Context, rec: Recorder, section: str, fp32_only: bool) -> list[str]:
    """Paths to run; on ``--device cpu --quick`` compiled paths run in the fp32 parity only."""
    chosen = []
    for path, (_, _, compiles) in PATHS.items():
        if compiles and ctx.cpu_quick and not fp32_only:
            rec.skip(f"{section} {path}", "--device cpu --quick compiles one variant per path")
        else:
            chosen.append(path)
    return chosen


def parity(ctx: Context, rec: Recorder) -> None:
    """Every path in fp32 against the float64 oracle, over ``CONFIGS`` (``--quick``: defaults)."""
    steps = ctx.pick(full=300, quick=100, cpu_quick=30)
    configs = {"defaults": CONFIGS["defaults"]} if ctx.quick else CONFIGS
    rec.notes.append(f"{steps} steps; configs {', '.join(configs)}")
    for path in _paths(ctx, rec, "parity", fp32_only=True):
        for cname, config in configs.items():
            name = f"{path} {cname}"
            with rec.item(name) as go:
                if go:
                    errors = run_scenario(path, config, torch.float32, ctx.device, steps)
                    record_errors(rec, name, path, errors)


def bf16_master(ctx: Context, rec: Recorder) -> None:
    """bf16 parameters with fp32 master weights on every path: the master copy vs the oracle."""
    steps = ctx.pick(full=200, quick=60, cpu_quick=20)
    configs = ["defaults"] if ctx.quick else ["defaults", "everything_on"]
    for path in _paths(ctx, rec, "bf16", fp32_only=False):
        for cname in configs:
            name = f"bf16 {path} {cname}"
            with rec.item(name) as go:
                if go:
                    errors = run_scenario(path, CONFIGS[cname], torch.bfloat16, ctx.device, steps)
                    rec.check(f"{name}: parameter == master rounded", errors["master_rounding_ok"])
                    record_errors(rec, name, path, errors)


def _fp16_scaled_run(path: str, device: torch.device, steps: int) -> dict[str, Any]:
    """fp16 parameters under ``torch.amp.GradScaler``: inf/nan on steps 1, 3 and 7."""
    cls, path_kwargs, _ = PATHS[path]
    gen = torch.Generator().manual_seed(1)
    shapes = [*GROUPS[0][0], *GROUPS[2][0]]
    params = [
        torch.randn(s, generator=gen).to(device, torch.float16).requires_grad_() for s in shapes
    ]
    initial = [[p.detach().double().clone() for p in params]]
    hyper = {**DEFAULTS, "lr": 1e-2, "gamma": 0.1}
    opt = cls(params, lr=1e-2, gamma=0.1, **path_kwargs)
    oracle = OracleAdaBalance()
    oracle.add_group(params, hyper["lr"])
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**8)
    bad_steps, skipped_ok = {1: "inf", 3: "nan", 7: "inf"}, True
    for step in range(steps):
        grads = [torch.randn(s, generator=gen).to(device, torch.float16) for s in shapes]
        scale = scaler.get_scale()
        scaler.scale(torch.ones((), device=device))  # starts the scaler; gradients set below
        for p, g in zip(params, grads, strict=True):
            p.grad = g * scale  # exact: a power of two, far from fp16's range
            if step in bad_steps:
                p.grad.view(-1)[0] = float(bad_steps[step])
        before = [t.clone() for p in params for t in (p.detach(), *opt.state[p].values())]
        scaler.step(opt)
        scaler.update()
        if step in bad_steps:
            after = [t for p in params for t in (p.detach(), *opt.state[p].values())]
            pairs = zip(before, after, strict=True) if len(before) == len(after) else None
            skipped_ok &= pairs is not None and all(
                torch.equal(x.nan_to_num(), y.nan_to_num()) for x, y in pairs
            )
            continue
        oracle.step(0, [g.double() for g in grads], hyper)
    out = compare(opt, params, oracle, initial)
    out["skipped_steps_change_nothing"] = skipped_ok
    out["scale_after"] = scaler.get_scale()
    out["steps_taken"] = int(opt.state[params[0]]["step"].item())
    out["steps_expected"] = steps - len(bad_steps)
    return out


def _fp16_model_run(path: str, device: torch.device, steps: int) -> list[float]:
    """Losses of a small fp16 MLP regression trained under GradScaler (initial scale 2**16)."""
    cls, path_kwargs, _ = PATHS[path]
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(128, 256), torch.nn.Tanh(), torch.nn.Linear(256, 128)
    ).to(device, torch.float16)
    inputs = torch.randn(64, 128, device=device, dtype=torch.float16)
    targets = torch.sin(inputs) * 0.5
    opt = cls(model.parameters(), lr=1e-2, beta3=0.9, **path_kwargs)  # beta3: a fast start
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(inputs).float(), targets.float())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses


def fp16_grad_scaler(ctx: Context, rec: Recorder) -> None:
    """fp16 parameters, fp32 master weights, ``torch.amp.GradScaler`` skipping inf/nan steps."""
    steps = ctx.pick(full=60, quick=30, cpu_quick=12)
    for path in _paths(ctx, rec, "fp16", fp32_only=False):
        name = f"fp16 {path}"
        with rec.item(f"{name} scaled gradients") as go:
            if go:
                out = _fp16_scaled_run(path, ctx.device, steps)
                rec.check(f"{name}: inf/nan steps change nothing",
                          out["skipped_steps_change_nothing"])  # fmt: skip
                rec.check(f"{name}: steps counted", out["steps_taken"] == out["steps_expected"],
                          out["steps_taken"], out["steps_expected"])  # fmt: skip
                rec.check(f"{name}: parameter == master rounded", out["master_rounding_ok"])
                record_errors(rec, name, path, out)
        with rec.item(f"{name} MLP") as go:
            if go:
                losses = _fp16_model_run(path, ctx.device, 2 * steps)
                first, last = losses[0], sum(losses[-5:]) / 5
                ok = all(math.isfinite(x) for x in losses) and last < 0.7 * first
                rec.check(f"{name} MLP: loss falls, finite", bool(ok), last, f"< 0.7 x {first:.4f}")
