"""AdaBalance step with block-wise low-bit state: decode, the fp32 update, encode, in one kernel.

Per element the kernel reads the parameter (or its fp32 master copy), the gradient and the
codes of three states, and writes the parameter and the codes: about 18 bytes against fp32
AdamW's 28 with 8-bit codes, 16.5 with 4-bit ones. The update is the fp32 kernel's
(``_update.adabalance_update``) on the decoded states; the parameter moves by the *unrounded* new
``m`` and ``s``, and only the stored state is rounded, each state by its codec (``_codecs``,
chosen in ``_blockwise_state.CODECS``).

``fused=True`` compiles the kernel with ``torch.compile`` (one graph per variant, dynamic sizes,
hyper-parameters and the rounding seed as tensors, so nothing recompiles during training);
``fused=False`` runs the same function eagerly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ._blockwise_state import scale_group
from ._codecs import Codec, noise_fields, rounding_noise, step_seed
from ._compile import DISTINCT_SIZES, compile_variant, run_compiled
from ._dtensor import global_offset, local_tensor
from ._step_scalars import KernelScalarsCache
from ._update import adabalance_update, write_mode_of, write_param
from .options import Hyper

__all__ = ["QuantizedTensors", "StateCodecs", "_blockwise_adabalance"]

# One compiled graph serves every shape: rows, blocks per row and bytes per block each get a
# symbol of their own (see _compile.DISTINCT_SIZES), and a size of 1 (a 1-D tensor's one row, a
# last dimension of one block) is not specialised into a graph of its own (a recompile of
# minutes with an empty cache).
_SHAPE_AGNOSTIC = {**DISTINCT_SIZES, "backed_size_oblivious": True}


class StateCodecs(NamedTuple):
    """The codec of each state of one kernel call (``max_exp_avg_sq``: None without amsbound)."""

    exp_avg: Codec
    exp_avg_sq: Codec
    exp_avg_lr: Codec
    max_exp_avg_sq: Codec | None


class ScaleGroups(NamedTuple):
    """Consecutive blocks that share a scale, per state, in one kernel call (1 without amsbound)."""

    exp_avg: int = 1
    exp_avg_sq: int = 1
    exp_avg_lr: int = 1
    max_exp_avg_sq: int = 1


class QuantizedTensors(NamedTuple):
    """The tensors of one kernel call, by row (the parameter's leading dimensions): codes
    ``(rows, blocks, block_size // per_byte)``, stored scales ``(rows, blocks // group +
    row_columns)`` (``group`` from :class:`ScaleGroups`), the parameter and gradient ``(rows,
    blocks, block_size)``. Kept 3-D so that the kernel finds a block's scale without dividing
    its index by the blocks per row."""

    param: Tensor
    grad: Tensor
    exp_avg: Tensor
    exp_avg_scale: Tensor
    exp_avg_sq: Tensor
    exp_avg_sq_scale: Tensor
    exp_avg_lr: Tensor
    exp_avg_lr_scale: Tensor
    max_exp_avg_sq: Tensor | None
    max_exp_avg_sq_scale: Tensor | None
    master: Tensor | None


def _random_fields(index: Tensor, seed: Tensor, count: int) -> list[Tensor]:
    """``count`` independent 16-bit random fields per element (one hash gives two).

    Only the first hash takes ``seed``, which carries a shard's offset into the whole tensor;
    the next ones hash the previous hash, so a shard draws what the whole tensor draws.
    """
    hashed = rounding_noise(index, seed)
    fields = list(noise_fields(hashed))
    while len(fields) < count:
        hashed = rounding_noise(hashed, 1)
        fields.extend(noise_fields(hashed))
    return fields[:count]


def _encode_into(
    codec: Codec, codes: Tensor, scale: Tensor, values: Tensor, noise, group: int
) -> None:
    stored, stored_scale = codec.encode_blocks(values, noise, group)
    codes.copy_(stored)
    scale.copy_(stored_scale)


def _blockwise_kernel(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_scale: Tensor,
    exp_avg_sq: Tensor,
    exp_avg_sq_scale: Tensor,
    exp_avg_lr: Tensor,
    exp_avg_lr_scale: Tensor,
    max_exp_avg_sq: Tensor | None,
    max_exp_avg_sq_scale: Tensor | None,
    master: Tensor | None,
    hyper: Tensor,
    seed: Tensor,
    write_mode: int,
    codecs: StateCodecs,
    groups: ScaleGroups,
) -> None:
    value = master if master is not None else param.to(torch.float32)
    codes = (exp_avg, exp_avg_sq, exp_avg_lr, max_exp_avg_sq)
    scales = (exp_avg_scale, exp_avg_sq_scale, exp_avg_lr_scale, max_exp_avg_sq_scale)
    # (codec, codes, stored scales, scale group) of each state; amsbound's maximum last
    states = [
        state for state in zip(codecs, codes, scales, groups, strict=True) if state[1] is not None
    ]
    decoded = [codec.decode_blocks(c, scale, group) for codec, c, scale, group in states]
    m, v, s, v_max = (*decoded, None)[:4]
    value, *new = adabalance_update(value, grad, m, v, s, v_max, hyper)

    stochastic = sum(codec.stochastic for codec, *_ in states)
    index = torch.arange(param.numel(), device=param.device).view(param.shape)
    fields = iter(_random_fields(index, seed, stochastic))
    for (codec, c, scale, group), values in zip(states, new, strict=False):
        noise = codec.noise(next(fields)) if codec.stochastic else None
        _encode_into(codec, c, scale, values, noise, group)
    write_param(param, master, value, write_mode)


class BlockwiseVariant(NamedTuple):
    """What selects a compiled kernel: each variant compiles once."""

    device_type: str
    param_dtype: torch.dtype
    grad_dtype: torch.dtype
    write_mode: int
    codecs: StateCodecs
    groups: ScaleGroups


@functools.cache
def _compiled_kernel(variant: BlockwiseVariant) -> Callable[..., None]:
    """The compiled kernel of one variant, under a code object of its own (see
    ``_compile.compile_variant``)."""
    codecs, groups = variant.codecs, variant.groups

    def kernel(*args: object) -> None:
        _blockwise_kernel(*args, codecs=codecs, groups=groups)  # type: ignore[arg-type]

    bits = "_".join(str(c.bits) if c is not None else "no" for c in codecs)
    name = f"_blockwise_kernel_{variant.device_type}_{variant.param_dtype}_{bits}".replace(".", "_")
    name += f"_{variant.grad_dtype}_{variant.write_mode}".replace(".", "_")
    name += "_groups_" + "_".join(map(str, groups))
    # Without the realize thresholds inductor stores the new m, v and s (three fp32 tensors the
    # size of the parameter: 270 MiB at BERT's embedding) between the pass that takes their
    # block maxima and the pass that encodes them; with them it recomputes them instead.
    options = {
        "cpp.dynamic_threads": True,
        "realize_opcount_threshold": 10_000,
        "realize_reads_threshold": 1_000,
        "realize_acc_reads_threshold": 1_000,
    }
    return compile_variant(kernel, name, options, _SHAPE_AGNOSTIC)


def _run_compiled(variant: BlockwiseVariant, args: tuple, owner: str) -> None:
    failure = (
        f"{owner}(fused=True) could not compile or run its torch.compile kernel for "
        f"{variant.param_dtype} parameters on {variant.device_type} (it needs a C++ compiler "
        f"on CPU, Triton on CUDA). Pass fused=False to run the same arithmetic eagerly."
    )
    what = f"{owner}'s step for {variant.param_dtype} on {variant.device_type}"
    run_compiled(variant, lambda: _compiled_kernel(variant), args, what=what, failure=failure)


def _blocks(tensor: Tensor, rows: int, blocks: int) -> Tensor:
    # detach(): an alias that is not a view, or dynamo would guard on the base's shape.
    return local_tensor(tensor).view(rows, blocks, -1).detach()


def _scales(tensor: Tensor, rows: int) -> Tensor:
    return local_tensor(tensor).view(rows, -1).detach()


def _scale_group(codes: Tensor, scales: Tensor, codec: Codec) -> int:
    return scale_group(local_tensor(codes), local_tensor(scales), codec)


def _rows(param: Tensor) -> int:
    """The rows of ``param``'s local tensor: the leading dimensions (a 1-D tensor is one row)."""
    local = local_tensor(param)
    return local.numel() // local.shape[-1]


def _blockwise_adabalance(
    *,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_scales: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_sq_scales: list[Tensor],
    exp_avg_lrs: list[Tensor],
    exp_avg_lr_scales: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    max_exp_avg_sq_scales: list[Tensor],
    state_steps: list[Tensor],
    master_params: list[Tensor] | None,
    codecs: list[StateCodecs],
    fused: bool,
    owner: str,
    hyper: Hyper,
) -> None:
    """One AdaBalance step of parameters whose state is block-wise low-bit.

    The lists are parallel, as in :func:`~adabalance_hf.optim.functional.adabalance`; the
    ``*_scales`` hold each code tensor's per-block scales, and ``codecs`` each tensor's
    :class:`StateCodecs`. Gradients must already be unscaled (GradScaler is handled by the
    optimizer class). ``owner`` names the optimizer class in messages; ``hyper`` holds the
    group's hyper-parameters (``options.hyper_of``).
    """
    if not params:
        return
    torch._foreach_add_(state_steps, 1)
    vectors = KernelScalarsCache(hyper)
    amsbound = hyper.amsbound
    for i, param in enumerate(params):
        step = state_steps[i].item()  # a CPU tensor: no device synchronisation
        if local_tensor(param).numel() == 0:
            continue  # a shard with no rows (FSDP2, fewer rows than ranks): nothing to step
        rows, codec = _rows(param), codecs[i]
        codes = [exp_avgs[i], exp_avg_sqs[i], exp_avg_lrs[i]]
        scales = [exp_avg_scales[i], exp_avg_sq_scales[i], exp_avg_lr_scales[i]]
        if amsbound:
            codes.append(max_exp_avg_sqs[i])
            scales.append(max_exp_avg_sq_scales[i])
        groups = ScaleGroups(*map(_scale_group, codes, scales, codec))
        blocks = groups.exp_avg * (
            local_tensor(scales[0]).numel() // rows - codec.exp_avg.row_columns
        )
        seed = torch.tensor(step_seed(int(step), global_offset(param)), device=param.device)
        master = None if master_params is None else _blocks(master_params[i], rows, blocks)
        write_mode = write_mode_of(param.dtype, master is not None, hyper.stochastic_round)
        tensors = QuantizedTensors(
            param=_blocks(param.detach(), rows, blocks),
            grad=_blocks(grads[i], rows, blocks),
            exp_avg=_blocks(exp_avgs[i], rows, blocks),
            exp_avg_scale=_scales(exp_avg_scales[i], rows),
            exp_avg_sq=_blocks(exp_avg_sqs[i], rows, blocks),
            exp_avg_sq_scale=_scales(exp_avg_sq_scales[i], rows),
            exp_avg_lr=_blocks(exp_avg_lrs[i], rows, blocks),
            exp_avg_lr_scale=_scales(exp_avg_lr_scales[i], rows),
            max_exp_avg_sq=_blocks(max_exp_avg_sqs[i], rows, blocks) if amsbound else None,
            max_exp_avg_sq_scale=_scales(max_exp_avg_sq_scales[i], rows) if amsbound else None,
            master=master,
        )
        args = (*tensors, vectors.vector(step, param.device, torch.float32), seed, write_mode)
        if fused:
            variant = BlockwiseVariant(
                device_type=param.device.type,
                param_dtype=param.dtype,
                grad_dtype=grads[i].dtype,
                write_mode=write_mode,
                codecs=codec,
                groups=groups,
            )
            _run_compiled(variant, args, owner)
        else:
            _blockwise_kernel(*args, codecs=codec, groups=groups)
