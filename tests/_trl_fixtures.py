"""A tiny Llama, a locally trained tokenizer and tiny datasets for the TRL and PEFT tests.

Nothing is downloaded: the tokenizer is trained here with ``tokenizers`` (word level), the model
is built from a ``LlamaConfig`` and the datasets are made from a small seeded grammar.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from _hf_helpers import args_kwargs, inner_optimizer  # noqa: F401 (re-exported)
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainingArguments

# transformers 5 renamed gradient_checkpointing (now a deprecated alias) to activation_checkpointing
_CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)

SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]
SUBJECTS = ["the cat", "a dog", "the bird", "my friend", "the teacher", "a child"]
VERBS = ["sees", "likes", "follows", "finds", "helps", "calls"]
OBJECTS = ["the ball", "a tree", "the house", "a river", "the garden", "a book"]
GOOD = ["yes", "good", "right", "true"]
BAD = ["no", "bad", "wrong", "false"]
# A minimal chat template, for any TRL path that formats conversations.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
)
# The attention projections of LlamaAttention: the LoRA targets.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _words() -> list[str]:
    words = {":", "user", "assistant", "question", "answer", "."}
    for phrase in SUBJECTS + VERBS + OBJECTS + GOOD + BAD:
        words.update(phrase.split())
    return sorted(words)


@lru_cache(maxsize=1)
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the grammar's words, trained once per test session."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL, min_frequency=1)
    tok.train_from_iterator([" ".join(_words())], trainer=trainer)
    bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
    assert (bos, eos) == (2, 3)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=64,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tiny_llama(seed: int = 0, hidden_size: int = 32) -> LlamaForCausalLM:
    """A 2-layer Llama (hidden size 32 unless told, MLP twice as wide), built from a config with
    a fixed seed."""
    tok = tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} ."


def sft_dataset(n: int = 16, seed: int = 0) -> Dataset:
    """Language-modeling rows: ``{"text": ...}``."""
    rng = random.Random(seed)
    return Dataset.from_list([{"text": f"{_sentence(rng)} {_sentence(rng)}"} for _ in range(n)])


def lm_dataset(n: int = 16, seed: int = 0, length: int = 16) -> Dataset:
    """``sft_dataset`` tokenized for a plain ``Trainer``: fixed-length ids, padding not learned."""
    tok = tokenizer()
    rows = []
    for text in sft_dataset(n, seed)["text"]:
        ids = tok(text + " <eos>", padding="max_length", max_length=length, truncation=True)
        labels = [t if m else -100 for t, m in zip(ids.input_ids, ids.attention_mask, strict=True)]
        rows.append({**ids, "labels": labels})
    return Dataset.from_list(rows)


def dpo_dataset(n: int = 16, seed: int = 1) -> Dataset:
    """Preference rows ``{"prompt", "chosen", "rejected"}`` (standard, not conversational)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        rows.append(
            {
                "prompt": f"question : {_sentence(rng)} answer :",
                "chosen": f" {rng.choice(GOOD)} {rng.choice(GOOD)} .",
                "rejected": f" {rng.choice(BAD)} {rng.choice(BAD)} .",
            }
        )
    return Dataset.from_list(rows)


def trl_kwargs(output_dir: Path | str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast, quiet, CPU-only, deterministic TRL config.

    The transformers tests' arguments (``_hf_helpers.args_kwargs``), with TRL's own settings.
    """
    kwargs = args_kwargs(
        Path(output_dir), bf16=False, max_steps=4, max_length=32, dataset_num_proc=None
    )
    kwargs[_CHECKPOINTING] = False  # TRL turns it on
    kwargs.update(overrides)
    return kwargs


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_state(left: Any, right: Any, where: str = "") -> None:
    """Nested optimizer state dicts equal, tensors bitwise."""
    if isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            assert_same_state(left[key], right[key], f"{where}/{key}")
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), where
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same_state(a, b, f"{where}[{i}]")
    elif isinstance(left, torch.Tensor):
        assert torch.equal(left, right), where
    else:
        assert left == right, where
