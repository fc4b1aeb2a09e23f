"""Which AdaBalance states tolerate 8 bits: GPT-2 on WikiText-2 with each state quantized alone.

Trains the GPT-2 recipe's small model (2 layers, 128 wide, 128 tokens, batch 16, 300 steps,
``adabalancew`` with ``beta3=0.99, gamma=1e-4``, lr 1e-3 with 30 warmup steps and linear decay)
on ``test.txt`` and reports the perplexity on ``valid.txt``, once per variant:

* ``fp32``: :class:`~adabalance_hf.AdaBalance`;
* ``8bit``: :class:`~adabalance_hf.AdaBalance8bit` (its compiled kernel);
* ``fake:<states>``: fp32 AdaBalance whose listed states are rounded through AdaBalance8bit's
  codes after every step (``m``, ``v``, ``s`` for ``exp_avg``, ``exp_avg_sq``, ``exp_avg_lr``),
  the same rounding as AdaBalance8bit (nearest for ``m``, stochastic for ``v`` and ``s``), so
  each state's cost is measured alone; ``fake-nearest:<states>`` rounds all to nearest.

Words are the tokens (WikiText-2 is tokenized): the 8,191 most frequent words of the training
text and one unknown token, so the run needs no tokenizer training and no download::

    python benchmarks/lowbit_ablation.py --wikitext_dir ../shared/data/wikitext-2 \\
        --variants fp32 8bit fake:m fake:v fake:s fake:m,v fake:m,v,s fake-nearest:m,v,s

Results go to ``benchmarks/results/lowbit_ablation.{json,md}``; runs already recorded there are
skipped, so the benchmark can be stopped and continued.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import time
from pathlib import Path

import torch

from adabalance_hf import AdaBalance, AdaBalance8bit
from adabalance_hf.optim._blockwise import (
    NEAREST,
    block_scale,
    decode_signed,
    decode_unsigned,
    encode_signed,
    encode_unsigned,
    noise_fields,
    rounding_noise,
    step_seed,
)
from adabalance_hf.optim._blockwise_state import tensor_block_size

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


def round_states(optimizer: AdaBalance, states: list[str], nearest: bool) -> None:
    """Round the listed states of every blockable tensor through AdaBalance8bit's codes."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            block = tensor_block_size(param, 128)
            if not state or block is None:
                continue
            index = torch.arange(param.numel()).view(-1, block)
            noise_v, noise_s = noise_fields(rounding_noise(index, step_seed(int(state["step"]))))
            for name in states:
                values = state[STATE_KEYS[name]].view(-1, block)
                scale = block_scale(values)
                if name == "m":
                    rounded = decode_signed(encode_signed(values, scale), scale)
                else:
                    noise = NEAREST if nearest else (noise_v if name == "v" else noise_s)
                    rounded = decode_unsigned(encode_unsigned(values, scale, noise), scale)
                values.copy_(rounded)


def run(variant: str, seed: int, train: torch.Tensor, valid: torch.Tensor, steps: int) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=8192, n_embd=128, n_layer=2, n_head=2, n_positions=128)
    model = GPT2LMHeadModel(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    kind, _, listed = variant.partition(":")
    common = dict(HYPER, decoupled_weight_decay=True)
    if kind == "8bit":
        optimizer = AdaBalance8bit(groups, **common)
    else:
        optimizer = AdaBalance(groups, **common)
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
        if kind.startswith("fake"):
            round_states(optimizer, listed.split(","), nearest=kind == "fake-nearest")
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
