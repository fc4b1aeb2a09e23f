"""The value of fp32 master weights: bf16 GPT-2 training tracks fp32 with them, not without."""

from __future__ import annotations

import statistics

import pytest
import torch

from adabalance_hf import AdaBalance

transformers = pytest.importorskip("transformers")

STEPS = 200
VOCAB = 64


def _markov_batches(steps: int, batch: int = 16, length: int = 32) -> list[torch.Tensor]:
    """Token sequences from a random Markov chain where each token has two likely successors."""
    generator = torch.Generator().manual_seed(0)
    successors = torch.randint(0, VOCAB, (VOCAB, 2), generator=generator)
    batches = []
    for _ in range(steps):
        tokens = torch.empty(batch, length, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, VOCAB, (batch,), generator=generator)
        for position in range(1, length):
            choice = torch.randint(0, 2, (batch,), generator=generator)
            tokens[:, position] = successors[tokens[:, position - 1], choice]
        batches.append(tokens)
    return batches


def _losses(dtype: torch.dtype, master_weights: bool) -> list[float]:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=64,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).to(dtype)
    optimizer = AdaBalance(model.parameters(), lr=1e-3, master_weights=master_weights)
    losses = []
    for tokens in _markov_batches(STEPS):
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_bf16_with_master_weights_tracks_fp32_and_plain_bf16_does_not() -> None:
    def final(losses: list[float]) -> float:
        return statistics.mean(losses[-25:])

    fp32 = final(_losses(torch.float32, master_weights=True))
    with_master = final(_losses(torch.bfloat16, master_weights=True))
    plain = final(_losses(torch.bfloat16, master_weights=False))
    assert fp32 < 2.0, "the fp32 run must learn for the comparison to mean anything"
    assert abs(with_master - fp32) < 0.05, (fp32, with_master)
    assert plain - fp32 > 0.1, (fp32, plain)
    assert plain - fp32 > 4 * abs(with_master - fp32), (fp32, with_master, plain)
