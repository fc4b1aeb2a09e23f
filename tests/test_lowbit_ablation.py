"""``benchmarks/lowbit_ablation.py``'s fake-quantized variants run and really round the states.

The ablation's ``fake:`` variants round an fp32 AdaBalance's states through a code after every
step; nothing else runs that code, so a change to the codecs could break it unnoticed (the
one-byte scale layout removed a method it called). Tiny random token data, two steps: no
download and no ``../shared``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from lowbit_ablation import HYPER, fake_codecs, round_states, run

from adabalance_hf import AdaBalance

SHIPPED_4BIT = "m=4!s^3r@32,v=e3m1nz^3r@32,s=e2m2nz^3r@32"


@pytest.mark.parametrize(
    "variant",
    ["fake:m,v", f"fake:{SHIPPED_4BIT}", f"fake-all:{SHIPPED_4BIT}", "fake:s=e2m2nz^@r1"],
)
def test_fake_variants_train_to_a_finite_perplexity(variant) -> None:
    generator = torch.Generator().manual_seed(0)
    train = torch.randint(8192, (32, 128), generator=generator)
    valid = torch.randint(8192, (32, 128), generator=generator)
    record = run(variant, seed=0, train=train, valid=valid, steps=2)
    assert record["variant"] == variant and math.isfinite(record["perplexity"])


@pytest.mark.parametrize(("spec", "codes"), [("m=4", 16), ("v=e3m1nz", 16), ("s=8", 256)])
def test_rounding_leaves_at_most_the_codes_values_per_block(spec, codes) -> None:
    """Blocks of 32 of an fp32 state hold 32 distinct values; after rounding through a 4-bit
    code at most 16, through an 8-bit code at most 256 (so 32 again): the values changed."""
    param = torch.nn.Parameter(torch.randn(64, 64))
    optimizer = AdaBalance([param], **HYPER)
    param.grad = torch.randn(64, 64)
    optimizer.step()
    key = {"m": "exp_avg", "v": "exp_avg_sq", "s": "exp_avg_lr"}[spec[0]]
    before = optimizer.state[param][key].clone()
    round_states(optimizer, fake_codecs(f"fake:{spec}@32"))
    after = optimizer.state[param][key]
    assert not torch.equal(after, before)
    distinct = max(len(block.unique()) for block in after.view(-1, 32))
    assert distinct <= min(codes, 32)
    if codes < 32:
        assert max(len(block.unique()) for block in before.view(-1, 32)) == 32
