"""Fused AdaBalance step: one ``torch.compile``-generated kernel per tensor.

The kernel reads p, g, m, v, s (and the fp32 master copy) once and writes them once, with no
temporary, so a step runs near the memory-bandwidth limit. Compile time is bounded: tensors are
passed flattened to 1-D with dynamic sizes, so one compiled graph serves every shape of a given
dtype and variant (amsbound, master weights, rounding), and every hyper-parameter enters as an
element of one small tensor, so a learning-rate schedule never recompiles.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ._precision import compute_dtype, stochastic_round_to_bf16
from ._step_scalars import step_scalars

__all__ = ["_fused_adabalance", "fused_kernel_supports"]

# Indices into the hyper-parameter vector handed to the kernel. Complements such as 1 - beta2
# are computed in float64 on the host: 1 - float32(0.999) would be off by 1e-5 relative.
_ETA_SCALE, _BC2_SQRT, _LOWER, _UPPER, _ONE_MINUS_BETA1, _BETA2, _ONE_MINUS_BETA2 = range(7)
_BETA3, _EPS, _L2, _DECAY, _GRAD_SIGN = range(7, 12)

# How the kernel's fp32 result reaches the parameter.
# (_WRITE_PARAM: copied into the parameter, rounded to nearest if its dtype is lower.)
_WRITE_PARAM, _WRITE_MASTER, _WRITE_STOCHASTIC = range(3)


def _adabalance_kernel(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    exp_avg_lr: Tensor,
    max_exp_avg_sq: Tensor | None,
    master: Tensor | None,
    hyper: Tensor,
    write_mode: int,
) -> None:
    if master is not None:
        value = master
    else:
        value = param.to(exp_avg.dtype)
    value = value * hyper[_DECAY]
    g = grad.to(exp_avg.dtype) * hyper[_GRAD_SIGN] + hyper[_L2] * value
    exp_avg.lerp_(g, hyper[_ONE_MINUS_BETA1])
    exp_avg_sq.mul_(hyper[_BETA2]).addcmul_(g, g, value=hyper[_ONE_MINUS_BETA2])
    if max_exp_avg_sq is not None:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        denom = max_exp_avg_sq.sqrt() + hyper[_EPS]
    else:
        denom = exp_avg_sq.sqrt() / hyper[_BC2_SQRT] + hyper[_EPS]
    exp_avg_lr.mul_(hyper[_BETA3]).add_(hyper[_ETA_SCALE] / denom)
    rate = torch.minimum(torch.maximum(exp_avg_lr, hyper[_LOWER]), hyper[_UPPER])
    value = value - rate * exp_avg
    if write_mode == _WRITE_MASTER:
        master.copy_(value)  # type: ignore[union-attr]
        param.copy_(value)
    elif write_mode == _WRITE_STOCHASTIC:
        param.copy_(stochastic_round_to_bf16(value))
    else:
        param.copy_(value)


@functools.cache
def _compiled_kernel(variant: tuple) -> Callable[..., None]:
    """The compiled kernel for one variant (dtypes, device type, amsbound, write mode).

    Each variant gets a copy of the kernel with a code object of its own, because dynamo keeps
    one cache, with a limit of 8 entries, per code object: variants sharing one would evict each
    other and, with ``fullgraph=True``, fail once the limit is hit.
    """
    name = "_adabalance_kernel_" + "_".join(str(part).replace(".", "_") for part in variant)
    code = _adabalance_kernel.__code__.replace(co_name=name)
    kernel = types.FunctionType(code, _adabalance_kernel.__globals__, name)
    # With dynamic sizes inductor decides at compile time, from the first call's size, whether
    # to parallelise; a first call on a bias would give a one-thread kernel for every tensor.
    # dynamic_threads lets the OpenMP runtime decide per call instead.
    return torch.compile(
        kernel, fullgraph=True, dynamic=True, options={"cpp.dynamic_threads": True}
    )


def fused_kernel_supports(tensors: list[Tensor]) -> bool:
    """Whether the compiled kernel takes these tensors (contiguous, at least 2 elements).

    Single elements would make ``dynamic=True`` specialise and recompile; they and
    non-contiguous tensors take the per-tensor path instead.
    """
    return all(t.is_contiguous() and t.numel() >= 2 for t in tensors)


def _local(tensor: Tensor) -> Tensor:
    # AdaBalance is elementwise, so a DTensor's local shard steps exactly like a plain tensor.
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


_VARIANTS_RUN: set[tuple] = set()


def _run_kernel(variant: tuple, *args: object) -> None:
    if variant in _VARIANTS_RUN:
        _compiled_kernel(variant)(*args)
        return
    try:
        with warnings.catch_warnings():
            # The first compile imports torch modules that raise DeprecationWarnings about
            # torch.jit; they concern torch itself, not the caller.
            warnings.simplefilter("ignore", DeprecationWarning)
            _compiled_kernel(variant)(*args)
        _VARIANTS_RUN.add(variant)
    except Exception as error:
        device, param_dtype, grad_dtype = variant[:3]
        raise RuntimeError(
            f"AdaBalance(fused=True) could not compile or run its torch.compile kernel for "
            f"{param_dtype} parameters with {grad_dtype} gradients on {device} (it needs a C++ "
            f"compiler on CPU, Triton on CUDA; the error below says whether that is the "
            f"cause). Use foreach=True, or fused=False. torch.compile said: "
            f"{type(error).__name__}: {error}"
        ) from error


def _fused_adabalance(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_lrs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    master_params: list[Tensor] | None,
    *,
    amsbound: bool,
    has_complex: bool,
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
    if has_complex:
        raise RuntimeError(
            "AdaBalance(fused=True) does not take complex parameters; use foreach=True or "
            "fused=False, which optimize them as their real view"
        )
    l2 = weight_decay if not decoupled_weight_decay else 0.0
    decay = 1 - lr * weight_decay if decoupled_weight_decay else 1.0
    hyper_cache: dict[tuple[float, torch.device, torch.dtype], Tensor] = {}
    for i, param in enumerate(params):
        state_steps[i] += 1
        step = state_steps[i].item()
        dtype = compute_dtype(param.dtype)
        key = (step, param.device, dtype)
        if key not in hyper_cache:
            s = step_scalars(
                step,
                lr=lr,
                base_lr=base_lr,
                beta1=beta1,
                beta2=beta2,
                final_lr=final_lr,
                gamma=gamma,
            )
            values = [(1 - beta3) * s.step_size, s.bias_correction2_sqrt, s.lower, s.upper]
            values += [1 - beta1, beta2, 1 - beta2, beta3, eps, l2, decay]
            values.append(-1.0 if maximize else 1.0)
            hyper_cache[key] = torch.tensor(values, dtype=dtype, device=param.device)

        if master_params is not None:
            write_mode, master = _WRITE_MASTER, _local(master_params[i]).view(-1)
        else:
            bf16_rounding = stochastic_round and param.dtype == torch.bfloat16
            write_mode = _WRITE_STOCHASTIC if bf16_rounding else _WRITE_PARAM
            master = None
        grad = grads[i]
        variant = (param.device.type, param.dtype, grad.dtype, dtype, amsbound, write_mode)
        _run_kernel(
            variant,
            _local(param).detach().view(-1),
            _local(grad).view(-1),
            _local(exp_avgs[i]).view(-1),
            _local(exp_avg_sqs[i]).view(-1),
            _local(exp_avg_lrs[i]).view(-1),
            _local(max_exp_avg_sqs[i]).view(-1) if amsbound else None,
            master,
            hyper_cache[key],
            write_mode,
        )
