"""Where AdaBalance trains without gradient clipping: a small grid on a tiny GPT-2.

A plain training loop (no Trainer, no schedule) on a 2-layer, 64-wide GPT-2 built from a config,
on a learnable synthetic text: sequences of 32 tokens from a fixed random Markov chain over 128
tokens, each token followed by one of 4 others (the best possible loss is ``ln 4 = 1.39``; the
initial loss is about ``ln 128 = 4.85``). No download. Each run takes ``--steps`` steps of batch
16 and then reports the loss on 64 held-out sequences.

* ``trap``: the GPT-2 recipe's settings (``adabalancew``, lr 3e-3, ``beta3=0.99, gamma=1e-4,
  final_lr=0.3``) with fp32 state, with 8-bit state (``AdaBalance8bit``) and with the reference
  code's step (``benchmarks/_reference_adabalance.py``, L2 weight decay 0), against AdamW; each
  with and without ``clip_grad_norm_(params, 1.0)``.
* ``grid``: lr in {1e-3, 3e-3, 1e-2} x beta3 in {0.9, 0.99, 0.999} x gamma in {1e-4, 1e-3}
  (``adabalancew``, ``final_lr=0.3``), with and without clipping, AdamW at each lr, from scratch
  and from a "pretrained" model (the same model after 100 AdamW steps at lr 1e-3).
* ``variants``: changes at the trap settings that might remove the trap (``gamma``,
  ``final_lr``, a 10-step linear warmup, ``eps``), on the trap section's seeds.
* ``trace``: per-step instrumentation of one trap run (the first seed that diverges): the
  smoothed rate ``s`` against Adam's current rate ``eta`` and the bounds, and the update
  ``clamp(s, lo, hi) * m``.

A run *diverged* at the first step whose loss is not finite or above twice the initial loss; it
*stalled* if it never diverged but its held-out loss is above 90% of the initial loss; else it
*trained*. The weight decay is 0.01 (AdamW-style; none on biases and LayerNorm weights)::

    python benchmarks/stability_envelope.py            # about 5.5 minutes on 2 CPU cores
    python benchmarks/stability_envelope.py --quick    # lr 3e-3 only, from scratch, 1 seed

Results go to ``benchmarks/results/stability_envelope.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

from adabalance_hf import AdaBalance, AdaBalance8bit
from adabalance_hf.optim._step_scalars import step_scalars

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _reference_adabalance import ReferenceAdaBalance  # noqa: E402

VOCAB, LENGTH, BATCH, SUCCESSORS = 128, 32, 16, 4
TRAP = dict(lr=3e-3, beta3=0.99, gamma=1e-4, final_lr=0.3)
WEIGHT_DECAY = 0.01
PRETRAIN_STEPS, PRETRAIN_LR = 100, 1e-3
CLIPS = (None, 1.0)


def markov_text(count: int = 576, seed: int = 0) -> torch.Tensor:
    """``count`` sequences of a fixed random Markov chain: each token has 4 equally likely next."""
    generator = torch.Generator().manual_seed(seed)
    successors = torch.randint(VOCAB, (VOCAB, SUCCESSORS), generator=generator)
    text = torch.empty(count, LENGTH, dtype=torch.long)
    text[:, 0] = torch.randint(VOCAB, (count,), generator=generator)
    for t in range(1, LENGTH):
        choice = torch.randint(SUCCESSORS, (count,), generator=generator)
        text[:, t] = successors[text[:, t - 1], choice]
    return text


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # the config's default bos/eos ids are outside the vocabulary
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=64, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config)


def make_optimizer(kind: str, model: torch.nn.Module, settings: dict) -> torch.optim.Optimizer:
    """``adamw``, ``adabalancew`` (fp32 state), ``adabalancew_8bit`` or ``reference``."""
    hyper = {k: v for k, v in settings.items() if k in ("lr", "beta3", "gamma", "final_lr", "eps")}
    if kind == "reference":
        return ReferenceAdaBalance(model.parameters(), **hyper)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=settings["lr"])
    cls = AdaBalance8bit if kind == "adabalancew_8bit" else AdaBalance
    return cls(groups, decoupled_weight_decay=True, **hyper)


def train(
    kind: str,
    settings: dict,
    text: torch.Tensor,
    steps: int,
    seed: int,
    clip: float | None,
    start: dict | None = None,
    trace: list | None = None,
) -> dict:
    """One run; ``start`` is a model state to begin from, ``trace`` collects per-step numbers."""
    model = tiny_gpt2(seed)
    if start is not None:
        model.load_state_dict(start)
    optimizer = make_optimizer(kind, model, settings)
    warmup = settings.get("warmup", 0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: min(1.0, (t + 1) / warmup) if warmup else 1.0
    )
    train_text, held_out = text[:-64], text[-64:]
    generator = torch.Generator().manual_seed(seed + 1)
    params = list(model.parameters())
    losses: list[float] = []
    began = time.time()
    for step in range(1, steps + 1):
        batch = train_text[torch.randint(len(train_text), (BATCH,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip or math.inf).item()
        if trace is not None:
            grads = {name: p.grad.detach().abs().flatten() for name, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
        if trace is not None:
            trace.append(trace_step(model, optimizer, settings, step, losses[-1], grad_norm, grads))
    model.eval()
    with torch.no_grad():
        held_out_loss = model(input_ids=held_out, labels=held_out).loss.item()
    initial = losses[0]
    bad = [i + 1 for i, x in enumerate(losses) if not (math.isfinite(x) and x <= 2 * initial)]
    nonfinite = [i + 1 for i, x in enumerate(losses) if not math.isfinite(x)]
    if bad or not math.isfinite(held_out_loss):
        outcome = "diverged"
    elif held_out_loss > 0.9 * initial:
        outcome = "stalled"
    else:
        outcome = "trained"
    return {
        "optimizer": kind,
        "settings": settings,
        "clip": clip,
        "seed": seed,
        "steps": steps,
        "outcome": outcome,
        "diverged_step": bad[0] if bad else None,
        "first_nonfinite_step": nonfinite[0] if nonfinite else None,
        "initial_loss": initial,
        "max_loss": max(losses),
        "final_train_loss": losses[-1],
        "held_out_loss": held_out_loss,
        "wall_time_s": time.time() - began,
    }


def trace_step(model, optimizer, settings, step, loss, grad_norm, grads) -> dict:
    """The smoothed rate ``s`` against Adam's rate ``eta`` and the bounds after one step."""
    scalars = step_scalars(
        step,
        lr=settings["lr"],
        base_lr=settings["lr"],
        beta1=0.9,
        beta2=0.999,
        final_lr=settings["final_lr"],
        gamma=settings["gamma"],
    )
    worst = {"update": 0.0}
    rates, etas, updates, adam = [], [], [], []
    for name, param in model.named_parameters():
        state = optimizer.state[param]
        s, m = state["exp_avg_lr"].flatten(), state["exp_avg"].flatten()
        eta = scalars.step_size / (
            (state["exp_avg_sq"].flatten() / scalars.bias_correction2_sqrt).sqrt() + 1e-8
        )
        update = s.clamp(scalars.lower, scalars.upper) * m
        rates.append(s), etas.append(eta), updates.append(update), adam.append(eta * m)
        index = int(update.abs().argmax())
        if update[index].abs() > worst["update"]:
            worst = {
                "update": float(update[index].abs()),
                "tensor": name,
                "rate": float(s[index].clamp(scalars.lower, scalars.upper)),
                "adam_rate": float(eta[index]),
                "grad": float(grads[name][index]),
                "param": float(param.detach().flatten()[index]),
            }
    s, eta, update, adam = (torch.cat(x) for x in (rates, etas, updates, adam))
    ratio = s.clamp(scalars.lower, scalars.upper) / eta
    return {
        "step": step,
        "loss": loss,
        "grad_norm": grad_norm,
        "upper_bound": scalars.upper,
        "median_rate_over_adam": float(ratio.median()),
        "share_rate_over_10x_adam": float((ratio > 10).float().mean()),
        "share_rate_at_upper_bound": float((s >= scalars.upper).float().mean()),
        "update_norm_over_adam": float(update.norm() / adam.norm()),
        "largest_update": worst,
    }


def pretrained(text: torch.Tensor) -> dict:
    """The tiny model after 100 AdamW steps at lr 1e-3 (seed 0), for the fine-tune scenario."""
    model = tiny_gpt2(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(1000)
    for _ in range(PRETRAIN_STEPS):
        batch = text[:-64][torch.randint(len(text) - 64, (BATCH,), generator=generator)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return copy.deepcopy(model.state_dict())


def cell(records: list[dict]) -> str:
    """One table cell: each seed's outcome (T/S/D@step) and held-out loss."""
    parts = []
    for r in sorted(records, key=lambda r: r["seed"]):
        loss = r["held_out_loss"]
        shown = f"{loss:.2f}" if math.isfinite(loss) and loss < 100 else f"{loss:.0e}"
        if r["outcome"] == "diverged":
            parts.append(f"**D@{r['diverged_step']}** {shown}")
        else:
            parts.append(f"{r['outcome'][0].upper()} {shown}")
    return ", ".join(parts)


def table(records: list[dict], section: str, scenario: str | None = None) -> str:
    rows = [r for r in records if r["section"] == section and r.get("scenario") == scenario]
    keys: dict[tuple, dict] = {}
    for r in rows:
        s = r["settings"]
        key = (r["optimizer"], s["lr"], s.get("beta3"), s.get("gamma"), s.get("final_lr"),
               s.get("warmup", 0), s.get("eps"))  # fmt: skip
        keys.setdefault(key, {}).setdefault(r["clip"], []).append(r)
    lines = [
        "| optimizer | lr | beta3 | gamma | final_lr | other | no clipping | clip 1.0 |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for (kind, lr, beta3, gamma, final_lr, warmup, eps), by_clip in keys.items():
        other = ", ".join(
            x for x in (f"warmup {warmup}" if warmup else "", f"eps {eps:g}" if eps else "") if x
        )
        cells = [cell(by_clip.get(clip, [])) or "-" for clip in CLIPS]
        shown = [f"{x:g}" if x is not None else "-" for x in (beta3, gamma, final_lr)]
        fields = [kind, f"{lr:g}", *shown, other or "-", *cells]
        lines.append("| " + " | ".join(fields) + " |")
    return "\n".join(lines) + "\n"


def trace_table(trace: list[dict]) -> str:
    lines = [
        "| step | loss | grad norm | upper bound | median s/eta | share s > 10 eta "
        "| update / Adam's | largest update: tensor, size, s, eta, grad, param |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in trace:
        w = t["largest_update"]
        lines.append(
            f"| {t['step']} | {t['loss']:.4g} | {t['grad_norm']:.3g} | {t['upper_bound']:.0f} "
            f"| {t['median_rate_over_adam']:.2f} | {t['share_rate_over_10x_adam']:.3f} "
            f"| {t['update_norm_over_adam']:.3g} | {w.get('tensor', '-')}, {w['update']:.3g}, "
            f"{w.get('rate', 0):.3g}, {w.get('adam_rate', 0):.3g}, {w.get('grad', 0):.2g}, "
            f"{w.get('param', 0):.2g} |"
        )
    return "\n".join(lines) + "\n"


def report(
    records: list[dict], trace: list[dict], trace_seed: int, args: argparse.Namespace, wall: float
) -> str:
    seeds = ", ".join(str(s) for s in args.seeds)
    trap_seeds = ", ".join(str(s) for s in args.trap_seeds)
    text = [
        "# AdaBalance's stability envelope without gradient clipping (tiny GPT-2)\n",
        f"Produced by `benchmarks/stability_envelope.py` ({args.steps} steps, batch {BATCH}, "
        f"seeds {seeds}; the trap and variants sections seeds {trap_seeds}; {wall / 60:.1f} min "
        "on a 2-core CPU). Each cell lists, per seed, "
        "**D@n**: diverged at step n (loss not finite or above twice the initial loss), "
        "S: stalled (held-out loss above 90% of the initial), T: trained; then the held-out "
        "loss after the last step (initial about 4.86 from scratch; the floor is 1.39).\n",
        "## The trap: the GPT-2 recipe's settings, per implementation\n",
        table(records, "trap"),
    ]
    for scenario, title in (("scratch", "from scratch"), ("finetune", "pretrained fine-tune")):
        if any(r.get("scenario") == scenario for r in records):
            text += [f"## Grid, {title}\n", table(records, "grid", scenario)]
    if any(r["section"] == "variants" for r in records):
        text += ["## Changes at the trap settings\n", table(records, "variants")]
    if trace:
        text += [
            f"## Trace of the trap run (seed {trace_seed}, no clipping)\n",
            "`s`: the smoothed rate (clamped, in the last column); `eta`: Adam's rate now "
            "(`lr / bc1 / (sqrt(v / bc2) + eps)`); "
            "update / Adam's: `|clamp(s, lo, hi) * m| / |eta * m|` over all elements.\n",
            trace_table(trace),
        ]
    return "\n".join(text)


def plan(args: argparse.Namespace) -> list[tuple[str, str | None, str, dict, float | None]]:
    """(section, scenario, optimizer, settings, clip) of every run."""
    runs = []
    trap_kinds = ["adamw", "adabalancew", "adabalancew_8bit", "reference"]
    for kind in trap_kinds:
        for clip in CLIPS:
            settings = {"lr": TRAP["lr"]} if kind == "adamw" else dict(TRAP)
            runs.append(("trap", None, kind, settings, clip))
    lrs = [3e-3] if args.quick else [1e-3, 3e-3, 1e-2]
    scenarios = ["scratch"] if args.quick else ["scratch", "finetune"]
    for scenario in scenarios:
        for lr in lrs:
            for clip in CLIPS:
                runs.append(("grid", scenario, "adamw", {"lr": lr}, clip))
            for beta3 in (0.9, 0.99, 0.999):
                for gamma in (1e-4, 1e-3):
                    for clip in CLIPS:
                        settings = dict(lr=lr, beta3=beta3, gamma=gamma, final_lr=TRAP["final_lr"])
                        runs.append(("grid", scenario, "adabalancew", settings, clip))
    if not args.quick:
        changes = [{"gamma": 1e-3}, {"final_lr": 0.1}, {"final_lr": 0.03}, {"warmup": 10}]
        for change in [*changes, {"eps": 1e-6}, {"beta3": 0.9, "gamma": 1e-3}]:
            for clip in CLIPS:
                runs.append(("variants", None, "adabalancew", {**TRAP, **change}, clip))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trap_seeds", nargs="+", type=int, default=list(range(8)))
    parser.add_argument("--quick", action="store_true", help="lr 3e-3, from scratch, seed 0")
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results/stability_envelope"))
    args = parser.parse_args()
    if args.quick:
        args.seeds = args.trap_seeds = args.seeds[:1]
    torch.set_num_threads(1)
    began = time.time()
    text = markov_text()
    start = None
    records: list[dict] = []
    for section, scenario, kind, settings, clip in plan(args):
        if scenario == "finetune" and start is None:
            start = pretrained(text)
        for seed in args.seeds if section == "grid" else args.trap_seeds:
            record = train(kind, settings, text, args.steps, seed, clip,
                           start if scenario == "finetune" else None)  # fmt: skip
            record.update(section=section, scenario=scenario)
            records.append(record)
            print(f"{section} {scenario or ''} {kind} {settings} clip {clip} seed {seed}: "
                  f"{record['outcome']} {record['diverged_step'] or ''} "
                  f"held-out {record['held_out_loss']:.3g}", flush=True)  # fmt: skip
    # the trace follows the first seed on which the trap settings diverge without clipping
    trapped = [r["seed"] for r in records if r["section"] == "trap" and r["clip"] is None
               and r["optimizer"] == "adabalancew" and r["outcome"] == "diverged"]  # fmt: skip
    trace_seed = trapped[0] if trapped else args.trap_seeds[0]
    trace: list[dict] = []
    train("adabalancew", dict(TRAP), text, args.steps, trace_seed, None, trace=trace)
    wall = time.time() - began
    out = {
        "steps": args.steps,
        "seeds": args.seeds,
        "trap_seeds": args.trap_seeds,
        "wall_time_s": wall,
        "runs": records,
        "trace_seed": trace_seed,
        "trace": trace,
    }
    Path(args.results + ".json").write_text(json.dumps(out, indent=1, allow_nan=True))
    Path(args.results + ".md").write_text(report(records, trace, trace_seed, args, wall))
    print(f"wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
