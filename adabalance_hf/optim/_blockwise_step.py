"""AdaBalance step with block-wise 8-bit state: decode, update in fp32, re-encode, in one kernel.

Per element the kernel reads the parameter (or its fp32 master copy), the gradient and three
one-byte codes, and writes the parameter and the three codes: about 18 bytes against fp32
AdamW's 28. The arithmetic is the fp32 kernel's (``_fused._adabalance_kernel``) on the decoded
states; the parameter moves by the *unrounded* new ``m`` and ``s``, and only the stored state is
rounded (see ``_blockwise`` for the codes): ``exp_avg`` and ``max_exp_avg_sq`` to nearest,
``exp_avg_sq`` and ``exp_avg_lr`` stochastically, because their averages (``beta2 = 0.999``, and
``beta3`` up to 0.999) move by less than a code's resolution per step.

``fused=True`` compiles the kernel with ``torch.compile`` (one graph per variant, dynamic sizes,
hyper-parameters and the rounding seed as tensors, so nothing recompiles during training);
``fused=False`` runs the same function eagerly.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ._blockwise import (
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
from ._compile import run_compiled
from ._dtensor import global_offset, local_tensor
from ._fused import _WRITE_MASTER, _WRITE_PARAM, _WRITE_STOCHASTIC
from ._precision import stochastic_round_to_bf16
from ._step_scalars import HYPER, KernelScalarsCache

__all__ = ["QuantizedTensors", "_blockwise_adabalance"]


class QuantizedTensors(NamedTuple):
    """The tensors of one kernel call: ``(blocks, block_size)`` views, scales ``(blocks, 1)``."""

    param: Tensor
    grad: Tensor
    exp_avg: Tensor  # int8 codes
    exp_avg_scale: Tensor
    exp_avg_sq: Tensor  # uint8 codes
    exp_avg_sq_scale: Tensor
    exp_avg_lr: Tensor  # uint8 codes
    exp_avg_lr_scale: Tensor
    max_exp_avg_sq: Tensor | None  # uint8 codes
    max_exp_avg_sq_scale: Tensor | None
    master: Tensor | None


def _adabalance_8bit_kernel(
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
) -> None:
    value = master if master is not None else param.to(torch.float32)
    value = value * hyper[HYPER.decay]
    g = grad.to(torch.float32) * hyper[HYPER.grad_sign] + hyper[HYPER.l2] * value
    m = decode_signed(exp_avg, exp_avg_scale)
    m = m + (g - m) * hyper[HYPER.one_minus_beta1]
    v = decode_unsigned(exp_avg_sq, exp_avg_sq_scale) * hyper[HYPER.beta2]
    v = v + g * g * hyper[HYPER.one_minus_beta2]
    if max_exp_avg_sq is not None:
        v_max = torch.maximum(decode_unsigned(max_exp_avg_sq, max_exp_avg_sq_scale), v)
        denom = v_max.sqrt() + hyper[HYPER.eps]
    else:
        denom = v.sqrt() * hyper[HYPER.bias_correction2_sqrt].reciprocal() + hyper[HYPER.eps]
    s = decode_unsigned(exp_avg_lr, exp_avg_lr_scale) * hyper[HYPER.beta3]
    s = s + hyper[HYPER.eta_scale] / denom
    rate = torch.minimum(torch.maximum(s, hyper[HYPER.lower]), hyper[HYPER.upper])
    value = value - rate * m

    index = torch.arange(param.numel(), device=param.device).view(param.shape)
    noise_v, noise_s = noise_fields(rounding_noise(index, seed))
    m_scale = block_scale(m)
    v_scale = block_scale(v)
    s_scale = block_scale(s)
    exp_avg.copy_(encode_signed(m, m_scale))
    exp_avg_scale.copy_(m_scale)
    exp_avg_sq.copy_(encode_unsigned(v, v_scale, noise_v))
    exp_avg_sq_scale.copy_(v_scale)
    exp_avg_lr.copy_(encode_unsigned(s, s_scale, noise_s))
    exp_avg_lr_scale.copy_(s_scale)
    if max_exp_avg_sq is not None:
        v_max_scale = block_scale(v_max)
        max_exp_avg_sq.copy_(encode_unsigned(v_max, v_max_scale, NEAREST))
        max_exp_avg_sq_scale.copy_(v_max_scale)  # type: ignore[union-attr]

    if write_mode == _WRITE_MASTER:
        master.copy_(value)  # type: ignore[union-attr]
        param.copy_(value)
    elif write_mode == _WRITE_STOCHASTIC:
        param.copy_(stochastic_round_to_bf16(value))
    else:
        param.copy_(value)


class BlockwiseVariant(NamedTuple):
    """What selects a compiled kernel: each variant compiles once."""

    device_type: str
    param_dtype: torch.dtype
    grad_dtype: torch.dtype
    amsbound: bool
    write_mode: int


@functools.cache
def _compiled_kernel(variant: BlockwiseVariant) -> Callable[..., None]:
    """The compiled kernel of one variant, under a code object of its own (see ``_fused``)."""
    name = "_adabalance_8bit_kernel_" + "_".join(str(p).replace(".", "_") for p in variant)
    code = _adabalance_8bit_kernel.__code__.replace(co_name=name)
    kernel = types.FunctionType(code, _adabalance_8bit_kernel.__globals__, name)
    # Without the realize thresholds inductor stores the new m, v and s (three fp32 tensors the
    # size of the parameter: 270 MiB at BERT's embedding) between the pass that takes their
    # block maxima and the pass that encodes them; with them it recomputes them instead.
    options = {
        "cpp.dynamic_threads": True,
        "realize_opcount_threshold": 10_000,
        "realize_reads_threshold": 1_000,
        "realize_acc_reads_threshold": 1_000,
    }
    return torch.compile(kernel, fullgraph=True, dynamic=True, options=options)


def _run_compiled(variant: BlockwiseVariant, args: tuple) -> None:
    failure = (
        f"AdaBalance8bit(fused=True) could not compile or run its torch.compile kernel for "
        f"{variant.param_dtype} parameters on {variant.device_type} (it needs a C++ compiler "
        f"on CPU, Triton on CUDA). Pass fused=False to run the same arithmetic eagerly."
    )
    what = f"AdaBalance8bit's step for {variant.param_dtype} on {variant.device_type}"
    run_compiled(variant, lambda: _compiled_kernel(variant), args, what=what, failure=failure)


def _blocks(tensor: Tensor, block_size: int) -> Tensor:
    return local_tensor(tensor).view(-1, block_size)


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
    block_sizes: list[int],
    fused: bool,
    amsbound: bool,
    lr: float,
    base_lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    final_lr: float,
    gamma: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    stochastic_round: bool,
) -> None:
    """One AdaBalance step of parameters whose state is block-wise 8-bit.

    The lists are parallel, as in :func:`~adabalance_hf.optim.functional.adabalance`; the
    ``*_scales`` hold each code tensor's per-block scales, shaped like the parameter with the
    last dimension divided by the tensor's entry of ``block_sizes``. Gradients must already be
    unscaled (GradScaler is handled by the optimizer class).
    """
    if not params:
        return
    torch._foreach_add_(state_steps, 1)
    vectors = KernelScalarsCache(
        lr=lr, base_lr=base_lr, beta1=beta1, beta2=beta2, beta3=beta3, final_lr=final_lr,
        gamma=gamma, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
    )  # fmt: skip
    for i, param in enumerate(params):
        step = state_steps[i].item()  # a CPU tensor: no device synchronisation
        block_size = block_sizes[i]
        seed = torch.tensor(step_seed(int(step), global_offset(param)), device=param.device)
        if master_params is not None:
            write_mode, master = _WRITE_MASTER, _blocks(master_params[i], block_size)
        else:
            bf16_rounding = stochastic_round and param.dtype == torch.bfloat16
            write_mode = _WRITE_STOCHASTIC if bf16_rounding else _WRITE_PARAM
            master = None
        tensors = QuantizedTensors(
            param=_blocks(param.detach(), block_size),
            grad=_blocks(grads[i], block_size),
            exp_avg=_blocks(exp_avgs[i], block_size),
            exp_avg_scale=_blocks(exp_avg_scales[i], 1),
            exp_avg_sq=_blocks(exp_avg_sqs[i], block_size),
            exp_avg_sq_scale=_blocks(exp_avg_sq_scales[i], 1),
            exp_avg_lr=_blocks(exp_avg_lrs[i], block_size),
            exp_avg_lr_scale=_blocks(exp_avg_lr_scales[i], 1),
            max_exp_avg_sq=_blocks(max_exp_avg_sqs[i], block_size) if amsbound else None,
            max_exp_avg_sq_scale=_blocks(max_exp_avg_sq_scales[i], 1) if amsbound else None,
            master=master,
        )
        args = (*tensors, vectors.vector(step, param.device, torch.float32), seed, write_mode)
        if fused:
            variant = BlockwiseVariant(
                device_type=param.device.type,
                param_dtype=param.dtype,
                grad_dtype=grads[i].dtype,
                amsbound=amsbound,
                write_mode=write_mode,
            )
            _run_compiled(variant, args)
        else:
            _adabalance_8bit_kernel(*args)
