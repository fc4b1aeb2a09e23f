"""Fused AdaBalance step: one ``torch.compile``-generated kernel per tensor.

The kernel reads p, g, m, v, s (and the fp32 master copy) once and writes them once, with no
temporary, so a step runs near the memory-bandwidth limit. Small tensors (biases, norm weights)
are concatenated and stepped by one call, because a compiled call's fixed cost (tens of
microseconds) exceeds their work; these copies are the only temporaries, bounded like the
foreach path's (10% of the elements, or the largest tensor). Compile time is bounded: tensors are
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

from ._multi_tensor import transient_budget
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
# Positions of the kernel's tensor arguments it writes: param, exp_avg, exp_avg_sq, exp_avg_lr,
# max_exp_avg_sq, master.
_WRITTEN = (0, 2, 3, 4, 5, 6)
# Tensors with fewer elements are stepped together (see _run_batched), in batches of at most
# transient_budget() elements of temporaries.
_BATCH_NUMEL = 1 << 16


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
    if not params:
        return
    torch._foreach_add_(state_steps, 1)
    hyper_cache: dict[tuple[float, torch.device, torch.dtype], Tensor] = {}
    # Concatenated copies of p, g, m, v, s (and max_exp_avg_sq, master) are the temporaries:
    # bounded like the foreach path's.
    copies_per_element = 5 + amsbound + (master_params is not None)
    batch_budget = transient_budget([p.numel() for p in params]) // copies_per_element
    pending: dict[tuple, tuple[list[list[Tensor | None]], int]] = {}
    for i, param in enumerate(params):
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
            write_mode, master = _WRITE_MASTER, _flat(master_params[i])
        else:
            bf16_rounding = stochastic_round and param.dtype == torch.bfloat16
            write_mode = _WRITE_STOCHASTIC if bf16_rounding else _WRITE_PARAM
            master = None
        grad = grads[i]
        variant = (param.device.type, param.dtype, grad.dtype, dtype, amsbound, write_mode)
        tensors = [
            _flat(param.detach()),
            _flat(grad),
            _flat(exp_avgs[i]),
            _flat(exp_avg_sqs[i]),
            _flat(exp_avg_lrs[i]),
            _flat(max_exp_avg_sqs[i]) if amsbound else None,
            master,
        ]
        numel = tensors[0].numel()  # a DTensor's local shard: what the temporaries hold
        if numel >= _BATCH_NUMEL or numel > batch_budget:
            _run_kernel(variant, *tensors, hyper_cache[key], write_mode)
            continue
        batch, batch_numel = pending.get((variant, key), ([], 0))
        if batch_numel + numel > batch_budget:
            _run_batched(variant, batch, hyper_cache[key])
            batch, batch_numel = [], 0
        batch.append(tensors)
        pending[(variant, key)] = (batch, batch_numel + numel)
    for (variant, key), (batch, _) in pending.items():
        _run_batched(variant, batch, hyper_cache[key])


def _flat(tensor: Tensor) -> Tensor:
    if type(tensor) is not Tensor:
        # AdaBalance is elementwise, so a DTensor's local shard steps like a plain tensor.
        to_local = getattr(tensor, "to_local", None)
        if to_local is not None:
            tensor = to_local()
    return tensor.view(-1)


def _run_batched(variant: tuple, batch: list[list[Tensor | None]], hyper: Tensor) -> None:
    """One kernel call for many small tensors: concatenate, step, copy the results back.

    The per-call cost of a compiled kernel (tens of microseconds of guards and wrappers) is more
    than the work on a bias or norm weight; the copies cost little at these sizes.
    """
    write_mode = variant[-1]
    if len(batch) == 1:
        _run_kernel(variant, *batch[0], hyper, write_mode)
        return
    columns = list(zip(*batch, strict=True))
    flat = [None if column[0] is None else torch.cat(column) for column in columns]
    _run_kernel(variant, *flat, hyper, write_mode)
    sizes = [tensor.numel() for tensor in columns[0]]
    for position in _WRITTEN:
        if flat[position] is not None:
            torch._foreach_copy_(list(columns[position]), list(flat[position].split(sizes)))
