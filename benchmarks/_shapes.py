"""Parameter sets for the benchmarks: the names and shapes of real models' parameters.

Plain shapes, no download and no transformers: ``bert`` (``bert-base-uncased``'s ``BertModel``
with pooler, 109,482,240 parameters in 199 tensors), ``gpt2`` (GPT-2 small's ``GPT2Model``,
124,439,808 in 148) and ``small`` (BERT-base shapes with 2 layers and an 8,192-token vocabulary,
21,454,080 in 39) and ``llama1b`` (TinyLlama-1.1B's ``LlamaForCausalLM``, untied head, grouped
key/value heads: 1,100,048,384 in 201), ``bert-flat`` (BERT-base's 109,482,240 parameters as
one tensor: what a step costs without any per-tensor work, for either optimizer), and two LoRA
adapters, the many small tensors a PEFT fine-tune steps: ``bert-lora`` (r=8 on BERT-base's query
and value, PEFT's default: 294,912 in 48) and ``llama7b-lora`` (r=16 on all seven linear layers
of Llama-2-7B's 32 blocks: 39,976,960 in 448).
:func:`make_tensors` builds seeded parameters and gradients in those shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "PARAM_SETS",
    "Shapes",
    "bert_base_shapes",
    "gpt2_small_shapes",
    "llama_1b_shapes",
    "make_tensors",
]

Shapes = list[tuple[str, tuple[int, ...]]]
SEED = 0


def _linear(name: str, out_features: int, in_features: int) -> Shapes:
    return [(f"{name}.weight", (out_features, in_features)), (f"{name}.bias", (out_features,))]


def _layer_norm(name: str, hidden: int) -> Shapes:
    return [(f"{name}.weight", (hidden,)), (f"{name}.bias", (hidden,))]


def bert_base_shapes(layers: int = 12, vocab: int = 30522) -> Shapes:
    """Names and shapes of ``bert-base-uncased``'s parameters (``BertModel`` with pooler)."""
    h, ffn = 768, 3072
    embeddings = {"word": vocab, "position": 512, "token_type": 2}
    shapes = [(f"embeddings.{n}_embeddings.weight", (v, h)) for n, v in embeddings.items()]
    shapes += _layer_norm("embeddings.LayerNorm", h)
    for i in range(layers):
        layer = f"encoder.layer.{i}"
        for proj in ("query", "key", "value"):
            shapes += _linear(f"{layer}.attention.self.{proj}", h, h)
        shapes += _linear(f"{layer}.attention.output.dense", h, h)
        shapes += _layer_norm(f"{layer}.attention.output.LayerNorm", h)
        shapes += _linear(f"{layer}.intermediate.dense", ffn, h)
        shapes += _linear(f"{layer}.output.dense", h, ffn)
        shapes += _layer_norm(f"{layer}.output.LayerNorm", h)
    return shapes + _linear("pooler.dense", h, h)


def gpt2_small_shapes() -> Shapes:
    """Names and shapes of ``gpt2``'s parameters (``GPT2Model``; Conv1D weights are in x out)."""
    h = 768
    shapes = [("wte.weight", (50257, h)), ("wpe.weight", (1024, h))]
    for i in range(12):
        b = f"h.{i}"
        shapes += _layer_norm(f"{b}.ln_1", h)
        shapes += [(f"{b}.attn.c_attn.weight", (h, 3 * h)), (f"{b}.attn.c_attn.bias", (3 * h,))]
        shapes += [(f"{b}.attn.c_proj.weight", (h, h)), (f"{b}.attn.c_proj.bias", (h,))]
        shapes += _layer_norm(f"{b}.ln_2", h)
        shapes += [(f"{b}.mlp.c_fc.weight", (h, 4 * h)), (f"{b}.mlp.c_fc.bias", (4 * h,))]
        shapes += [(f"{b}.mlp.c_proj.weight", (4 * h, h)), (f"{b}.mlp.c_proj.bias", (h,))]
    return shapes + _layer_norm("ln_f", h)


def llama_1b_shapes() -> Shapes:
    """Names and shapes of TinyLlama-1.1B's parameters (``LlamaForCausalLM``, no biases)."""
    h, ffn, kv, vocab = 2048, 5632, 256, 32000  # 32 query heads, 4 key/value heads of 64
    shapes = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(22):
        b = f"model.layers.{i}"
        for proj, out in (("q", h), ("k", kv), ("v", kv), ("o", h)):
            shapes.append((f"{b}.self_attn.{proj}_proj.weight", (out, h)))
        shapes += [(f"{b}.mlp.{n}_proj.weight", (ffn, h)) for n in ("gate", "up")]
        shapes += [(f"{b}.mlp.down_proj.weight", (h, ffn))]
        shapes += [(f"{b}.{n}_layernorm.weight", (h,)) for n in ("input", "post_attention")]
    return [*shapes, ("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]


def lora_shapes(base: Shapes, targets: tuple[str, ...], rank: int) -> Shapes:
    """The trainable parameters of a LoRA adapter of ``rank`` on ``base``'s linear weights whose
    name contains one of ``targets``: ``lora_A`` (rank x in) and ``lora_B`` (out x rank), as
    PEFT makes them (nn.Linear weights are out x in)."""
    shapes: Shapes = []
    for name, shape in base:
        if len(shape) == 2 and name.endswith(".weight") and any(t in name for t in targets):
            stem = name.removesuffix(".weight")
            out_features, in_features = shape
            shapes.append((f"{stem}.lora_A.weight", (rank, in_features)))
            shapes.append((f"{stem}.lora_B.weight", (out_features, rank)))
    return shapes


def llama_7b_shapes() -> Shapes:
    """Names and shapes of Llama-2-7B's linear layers (32 layers, width 4096, MLP 11008)."""
    h, ffn = 4096, 11008
    shapes = []
    for i in range(32):
        b = f"model.layers.{i}"
        shapes += [(f"{b}.self_attn.{p}_proj.weight", (h, h)) for p in ("q", "k", "v", "o")]
        shapes += [(f"{b}.mlp.{n}_proj.weight", (ffn, h)) for n in ("gate", "up")]
        shapes += [(f"{b}.mlp.down_proj.weight", (h, ffn))]
    return shapes


def _as_one_tensor(shapes: Shapes) -> Shapes:
    return [("all", (sum(math.prod(shape) for _, shape in shapes),))]


PARAM_SETS: dict[str, tuple[str, Callable[[], Shapes]]] = {
    "bert": ("BERT-base", bert_base_shapes),
    "gpt2": ("GPT-2 small", gpt2_small_shapes),
    "small": ("BERT-base, 2 layers, 8K vocabulary", lambda: bert_base_shapes(2, 8192)),
    "llama1b": ("TinyLlama-1.1B", llama_1b_shapes),
    "bert-flat": ("BERT-base as one tensor", lambda: _as_one_tensor(bert_base_shapes())),
    "bert-lora": (
        "LoRA r=8 on BERT-base's query and value (PEFT's default)",
        lambda: lora_shapes(bert_base_shapes(), ("query", "value"), 8),
    ),
    "llama7b-lora": (
        "LoRA r=16 on every linear layer of Llama-2-7B (QLoRA's recipe)",
        lambda: lora_shapes(llama_7b_shapes(), ("_proj",), 16),
    ),
}


def make_tensors(
    shapes: Shapes, device: torch.device, dtype: torch.dtype
) -> tuple[list[Tensor], list[Tensor]]:
    """Initial parameters (std 0.02, biases and LayerNorms too) and gradients (std 1e-2)."""
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    params, grads = [], []
    for _, shape in shapes:
        params.append((torch.randn(shape, generator=gen) * 0.02).to(device, dtype))
        grads.append((torch.randn(shape, generator=gen) * 1e-2).to(device, dtype))
    return params, grads
