"""Which AdaBalance states tolerate 8 or 4 bits: GPT-2 on WikiText-2 with each state's code alone.

Trains the GPT-2 recipe's small model (2 layers, 128 wide, 128 tokens, batch 16, 300 steps,
``adabalancew`` with ``beta3=0.99, gamma=1e-4``, lr 1e-3 with 30 warmup steps and linear decay)
on ``test.txt`` and reports the perplexity on ``valid.txt``, once per variant:

* ``fp32``: :class:`~adabalance_hf.AdaBalance`;
* ``8bit`` / ``4bit``: :class:`~adabalance_hf.AdaBalance8bit` / ``AdaBalance4bit`` (compiled);
* ``fake:<states>``: fp32 AdaBalance whose listed states are rounded through a code after every
  step, so each state's cost is measured alone. A state is ``m``, ``v`` or ``s`` (``exp_avg``,
  ``exp_avg_sq``, ``exp_avg_lr``), alone (the 8-bit optimizer's code) or as ``state=code``:
  ``8`` or ``4`` (the 8-/4-bit optimizer's code of that state), ``eXmY`` (a 4-bit float with
  ``X`` exponent and ``Y`` mantissa bits, a sign bit for ``m``), ``eXmYnz`` (the same without
  a zero code) or ``lin`` (16 equal steps, no zero). A code rounds as its optimizer rounds that
  state; a suffix ``!n`` rounds to nearest, ``!s`` stochastically, ``!g`` stochastically with
  low-discrepancy draws (each element's draws step by 1/golden ratio from a random start).
  ``fake-nearest:<states>`` rounds every listed state to nearest; ``@N`` after a code: blocks
  of ``N`` (default 128); ``@r1``: Li et al.'s rank-1 normalization for matrices (element
  ``(i, j)`` scaled by the smaller of row ``i``'s and column ``j``'s largest magnitude, both in
  bf16: ``2 (rows + cols)`` bytes a matrix), blocks of 32 for the other tensors. A ``^``
  after the code: the scales are powers of two (rounded up: one byte each, as the MX formats'
  E8M0 scales), e.g. ``fake:s=e2m2nz^@32``; ``^N``: one-byte scales with ``N`` mantissa and
  ``8 - N`` exponent bits relative to the tensor's largest scale (rounded up; QLoRA's double
  quantization with a float code), e.g. ``fake:m=4^3@32``; ``^Nr``: relative to the power of
  two above each row's largest scale instead (one byte a row, and a row is never split by
  FSDP2's sharding). ``fake-all:<states>`` rounds the small tensors that the optimizers keep
  in fp32 (biases, norm weights) too.
  Examples: ``fake:m,v`` (8-bit), ``fake:v=4``, ``fake:s=e4m0!s``, ``fake:m=4@32``; ``4bit@32``.

Words are the tokens (WikiText-2 is tokenized): the 8,191 most frequent words of the training
text and one unknown token, so the run needs no tokenizer training and no download::

    python benchmarks/lowbit_ablation.py --wikitext_dir ../shared/data/wikitext-2 \\
        --variants fp32 4bit fake:m=4 fake:v=4 fake:s=4 fake:m=4,v=4,s=4

Results go to ``benchmarks/results/lowbit_ablation.{json,md}``; runs already recorded there are
skipped, so the benchmark can be stopped and continued.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import re
import time
from pathlib import Path

import torch

from adabalance_hf import AdaBalance, AdaBalance4bit, AdaBalance8bit
from adabalance_hf.optim._blockwise_state import CODECS, tensor_block_size
from adabalance_hf.optim._blockwise_step import _random_fields as random_fields
from adabalance_hf.optim._codecs import (
    Codec,
    FloatCode,
    LinearCode,
    block_scale,
    power_of_two_above,
    step_seed,
)

ROOT = Path(__file__).resolve().parents[1]
STATE_KEYS = {"m": "exp_avg", "v": "exp_avg_sq", "s": "exp_avg_lr"}
HYPER = dict(lr=1e-3, beta3=0.99, gamma=1e-4, final_lr=0.1, weight_decay=0.01)


def words(path: Path) -> list[str]:
    if not path.is_file():
        raise SystemExit(f"--wikitext_dir: {path} does not exist (it needs test.txt and valid.txt)")
    return path.read_text(encoding="utf-8").replace("\n", " <eos> ").split()


def token_blocks(tokens: list[str], vocab: dict[str, int], length: int) -> torch.Tensor:
    ids = torch.tensor([vocab.get(word, 0) for word in tokens])
    count = ids.numel() // length
    return ids[: count * length].view(count, length)


def parse_codec(state: str, spec: str, nearest: bool) -> Codec:
    """The codec a ``fake:`` variant names for ``state`` (see the module docstring)."""
    key = STATE_KEYS[state]
    spec, _, rounding = spec.partition("!")
    if spec in ("", "8", "4"):
        codec = CODECS[int(spec or 8)][key]
    elif spec == "lin":
        codec = LinearCode(4, signed=False, stochastic=key != "exp_avg")
    elif match := re.fullmatch(r"e(\d)m(\d)(nz)?", spec):
        exponent, mantissa = int(match[1]), int(match[2])
        signed = key == "exp_avg"
        if signed + exponent + mantissa != 4:
            raise SystemExit(f"{spec}: a 4-bit code of {state} needs {4 - signed} exponent and "
                             f"mantissa bits")  # fmt: skip
        codec = FloatCode(4, signed=signed, stochastic=key != "exp_avg", mantissa_bits=mantissa,
                          zero=match[3] is None)  # fmt: skip
    else:
        raise SystemExit(f"unknown code {spec!r} for state {state}")
    if nearest or rounding == "n":
        return dataclasses.replace(codec, stochastic=False)
    return dataclasses.replace(codec, stochastic=True) if rounding in ("s", "g") else codec


def fake_codecs(
    variant: str,
) -> dict[str, tuple[Codec, int | None, bool, tuple[int, bool] | None]]:
    """State key -> (codec, block size or None for rank-1, low-discrepancy noise, one-byte
    scales: None for the codec's own, else (mantissa bits, -1 for powers of two; relative to
    each row)) of a ``fake:`` variant."""
    kind, _, listed = variant.partition(":")
    codecs = {}
    for item in listed.split(","):
        state, _, spec = item.partition("=")
        spec, _, block = spec.partition("@")
        spec, caret, scale_bits = spec.partition("^")
        per_row = scale_bits.endswith("r")
        scale_code = int(scale_bits.removesuffix("r") or -1) if caret else None  # -1: 2**k
        scale_code = (scale_code, per_row) if caret else None
        codec = parse_codec(state, spec, kind == "fake-nearest")
        size = None if block == "r1" else int(block or 128)
        codecs[STATE_KEYS[state]] = (codec, size, spec.endswith("!g"), scale_code)
    return codecs


def block_maxima(codec: Codec, values: torch.Tensor) -> torch.Tensor:
    """The scale of each block of ``values`` ``(blocks, block_size)`` without a ``^``: its
    largest magnitude, rounded up to bf16 for 4-bit codes (``AdaBalance4bit``'s scales before its
    one-byte layout, so that the rows recorded then keep their meaning), fp32 for 8-bit ones."""
    scale = block_scale(values)
    if codec.bits < 8:  # round the fp32 pattern up to its top 16 bits
        scale = ((scale.view(torch.int32) + 0xFFFF) & -65536).view(torch.float32)
    return scale


def rank1_scale(codec: Codec, values: torch.Tensor) -> torch.Tensor:
    """Li et al.'s rank-1 normalizer of a matrix: min(row's, column's largest magnitude)."""
    rows = block_maxima(codec, values)  # (rows, 1)
    columns = block_maxima(codec, values.t().contiguous()).t()  # (1, cols)
    return torch.minimum(rows, columns)


def byte_scale(scale: torch.Tensor, mantissa_bits: int, row: int | None = None) -> torch.Tensor:
    """``scale`` ``(blocks, 1)`` rounded up to a one-byte code: a power of two
    (``mantissa_bits=-1``), or an unsigned float with ``mantissa_bits`` of mantissa and
    ``8 - mantissa_bits`` of exponent relative to the tensor's largest scale (fp32, once per
    tensor) or, with ``row`` (blocks per row), to the power of two above each row's largest (one
    more byte a row); code 0 is a zero scale and smaller scales rise to the smallest code."""
    if mantissa_bits < 0:
        return power_of_two_above(scale)
    if row is None:
        top = scale.max().expand_as(scale)
    else:
        top = power_of_two_above(scale.view(-1, row).amax(1, keepdim=True))
        top = top.expand(-1, row).reshape_as(scale)
    drop = (1 << (23 - mantissa_bits)) - 1
    safe = torch.where(top > 0, top, 1.0)
    ratio = ((scale / safe).view(torch.int32) + drop & ~drop).view(torch.float32)
    smallest = 2.0 ** (2 - (1 << (8 - mantissa_bits)))  # exponents 0 .. 2 - 2**(8-N); 0: zero
    return torch.where(scale > 0, ratio.clamp(min=smallest) * top, 0.0)


def small_block_size(param: torch.Tensor, block_size: int) -> int | None:
    """The block size of a parameter the optimizers leave in fp32 (``fake-all:``)."""
    block = math.gcd(param.shape[-1], block_size)
    return block if param.dim() >= 1 and block >= 8 else None


def round_states(
    optimizer: AdaBalance,
    codecs: dict[str, tuple[Codec, int | None, bool, tuple[int, bool] | None]],
    small: bool = False,
) -> None:
    """Round the given states of every blockable tensor (with ``small``, of every tensor with a
    block size, those the optimizers keep in fp32 too) through their codecs."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            blocks = tensor_block_size
            if tensor_block_size(param, 128) is None:
                if not small:
                    continue
                blocks = small_block_size
            if not state or blocks(param, 128) is None:
                continue
            index = torch.arange(param.numel())
            step = int(state["step"])
            fields = random_fields(index, step_seed(step), 4)  # the optimizers' draws
            starts = random_fields(index, 0, 4)
            for i, (key, (codec, block_size, golden, scale_code)) in enumerate(codecs.items()):
                if golden:  # an additive recurrence: successive draws spread evenly
                    fields[i] = (starts[i] + step * 40503) & 0xFFFF
                if block_size is None and param.dim() == 2:
                    values = state[key]
                    scale = rank1_scale(codec, values)
                else:
                    block = blocks(param, block_size or 32)
                    values = state[key].view(-1, block)
                    scale = block_maxima(codec, values)
                if scale_code is not None:
                    mantissa_bits, per_row = scale_code
                    row = param.shape[-1] // values.shape[-1] if per_row else None
                    scale = byte_scale(scale, mantissa_bits, row)
                noise = codec.noise(fields[i].view_as(values)) if codec.stochastic else None
                values.copy_(codec.decode(codec.encode(values, scale, noise), scale))


def run(variant: str, seed: int, train: torch.Tensor, valid: torch.Tensor, steps: int) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=8192, n_embd=128, n_layer=2, n_head=2, n_positions=128)
    model = GPT2LMHeadModel(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    kind, _, block = variant.partition(":")[0].partition("@")
    common = dict(HYPER, decoupled_weight_decay=True)
    classes = {"8bit": AdaBalance8bit, "4bit": AdaBalance4bit}
    if kind in classes:
        optimizer = classes[kind](groups, **common, block_size=int(block or 128))
    else:
        optimizer = AdaBalance(groups, **common)
    codecs = fake_codecs(variant) if kind.startswith("fake") else {}
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: min((t + 1) / 30, max(0.0, (steps - t) / (steps - 30)))
    )
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for _ in range(steps):
        batch = train[torch.randint(len(train), (16,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
        if codecs:
            round_states(optimizer, codecs, small=kind == "fake-all")
    model.eval()
    with torch.no_grad():
        losses = [model(input_ids=b, labels=b).loss.item() for b in valid[:256].split(32)]
    return {
        "variant": variant,
        "seed": seed,
        "perplexity": math.exp(sum(losses) / len(losses)),
        "train_loss": loss.item(),
        "wall_time_s": time.time() - start,
    }


def table(records: list[dict]) -> str:
    """Markdown: each variant's perplexity, and its change against fp32 over the same seeds."""
    by_variant: dict[str, dict[int, float]] = collections.defaultdict(dict)
    for record in records:
        by_variant[record["variant"]][record["seed"]] = record["perplexity"]
    reference = by_variant.get("fp32", {})
    lines = [
        "| variant | seeds | validation perplexity | vs fp32 at the same seeds |",
        "| --- | ---: | ---: | ---: |",
    ]
    for variant, by_seed in by_variant.items():
        values = [by_seed[seed] for seed in sorted(by_seed)]
        mean = sum(values) / len(values)
        paired = [reference[seed] for seed in sorted(by_seed) if seed in reference]
        change = "-"
        if len(paired) == len(values):
            change = f"{100 * (mean / (sum(paired) / len(paired)) - 1):+.2f}%"
        lines.append(f"| {variant} | {len(values)} | {mean:.2f} "
                     f"({', '.join(f'{v:.2f}' for v in values)}) | {change} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wikitext_dir", required=True, help="folder with test.txt, valid.txt")
    parser.add_argument("--variants", nargs="+", default=["fp32", "8bit", "fake:m", "fake:v",
                        "fake:s", "fake:m,v", "fake:m,v,s", "fake-nearest:m,v,s"])  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results/lowbit_ablation"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = Path(args.wikitext_dir)
    train_words = words(folder / "test.txt")
    counts = collections.Counter(train_words).most_common(8191)
    vocab = {word: i + 1 for i, (word, _) in enumerate(counts)}
    train = token_blocks(train_words, vocab, 128)
    valid = token_blocks(words(folder / "valid.txt"), vocab, 128)
    path = Path(args.results + ".json")
    records = json.loads(path.read_text()) if path.is_file() else []
    done = {(r["variant"], r["seed"]) for r in records}
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            record = run(variant, seed, train, valid, args.steps)
            print(f"{variant} seed {seed}: perplexity {record['perplexity']:.2f} "
                  f"({record['wall_time_s']:.0f} s)", flush=True)  # fmt: skip
            records.append(record)
            path.write_text(json.dumps(records, indent=1))
            Path(args.results + ".md").write_text(table(records))
    print(table(records))


if __name__ == "__main__":
    main()
