"""Fused AdaBalance step: ``torch.compile``-generated kernels, a few tensors per call.

The kernel reads p, g, m, v, s (and the fp32 master copy) once and writes them once, with no
temporary, so a step runs near the memory-bandwidth limit. Each compiled call steps
``_CHUNK`` tensors: a call costs about 70 us beyond its work (2 CPU threads), which a step over
many small tensors, a LoRA adapter's, pays hundreds of times (Llama-2-7B's r=16 adapter on every
linear layer, 448 tensors: 2.0x ``AdamW(fused=True)`` in calls of four, 1.7x in calls of eight,
no better in calls of sixteen, whose first compile takes 23 s against 17), and one graph over a
whole model would take minutes to compile. A chunk short of ``_CHUNK`` tensors is filled with
tiny scratch tensors, so one compiled graph serves every chunk. Small tensors (biases, norm
weights) are concatenated into one member of a chunk; these copies are the only temporaries,
bounded like the foreach path's (10% of the elements, or the largest tensor). Compile time is
bounded: tensors are passed flattened to 1-D with dynamic sizes (each its own, see
``DISTINCT_SIZES``), so one compiled graph serves every shape of a given dtype and variant
(amsbound, master weights, rounding, loss scaling), and every hyper-parameter enters as an
element of one small tensor (laid out by ``_step_scalars.KernelScalars``), so a learning-rate
schedule never recompiles.

Under ``torch.amp.GradScaler`` the kernel takes the scaler's ``grad_scale`` and ``found_inf`` as
0-dim tensors, as torch's fused Adam does: it unscales the gradient (and stores the unscaled
gradient back, as an unscale pass would), and where ``found_inf`` is set it writes back the old
values, so neither tensor is read on the host.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._compile import DISTINCT_SIZES, compile_variant, run_compiled
from ._flat_aliases import FlatAliases, flat
from ._multi_tensor import transient_budget
from ._precision import LOW_PRECISION_DTYPES, compute_dtype
from ._step_scalars import KernelScalarsCache
from ._update import _WRITE_MASTER, adabalance_update, write_mode_of, write_param
from .options import Hyper

__all__ = ["KernelTensors", "KernelVariant", "_fused_adabalance", "fused_kernel_supports"]


class KernelTensors(NamedTuple):
    """One tensor's share of a kernel call (a chunk holds ``_CHUNK``), flattened to 1-D."""

    param: Tensor
    grad: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    exp_avg_lr: Tensor
    max_exp_avg_sq: Tensor | None
    master: Tensor | None


# The tensors the kernel writes (the gradient too when it unscales it), by name.
_WRITTEN = ("param", "exp_avg", "exp_avg_sq", "exp_avg_lr", "max_exp_avg_sq", "master")
_WRITTEN_UNSCALED = ("grad", *_WRITTEN)


class KernelVariant(NamedTuple):
    """What selects a compiled kernel: each variant compiles once."""

    device_type: str
    param_dtype: torch.dtype
    grad_dtype: torch.dtype
    compute_dtype: torch.dtype
    amsbound: bool
    write_mode: int
    unscale: bool  # divides the gradient by GradScaler's grad_scale
    skip_if_found_inf: bool  # leaves every tensor as it was where GradScaler found inf/nan


# Tensors with fewer elements are stepped together (see _run_batched), in batches of at most
# transient_budget() elements of temporaries.
_BATCH_NUMEL = 1 << 16
# Tensors per compiled call (see the module docstring), and the size of the scratch tensors that
# fill a short chunk (at least 2: a dynamic size of 0 or 1 would be specialised).
_CHUNK = 8
_SCRATCH_NUMEL = 16


def _step_tensor(
    tensors: KernelTensors,
    hyper: Tensor,
    inv_grad_scale: Tensor | None,
    found_inf: Tensor | None,
    write_mode: int,
) -> None:
    param, grad, master = tensors.param, tensors.grad, tensors.master
    exp_avg, exp_avg_sq = tensors.exp_avg, tensors.exp_avg_sq
    exp_avg_lr, max_exp_avg_sq = tensors.exp_avg_lr, tensors.max_exp_avg_sq
    if found_inf is not None:
        # Where GradScaler found inf/nan, every tensor written below gets its old value back
        # (inductor fuses the copies away: each element is still read once and written once).
        written = [param, exp_avg, exp_avg_sq, exp_avg_lr, max_exp_avg_sq, master]
        if inv_grad_scale is not None:
            written.append(grad)
        written = [t for t in written if t is not None]
        saved = [t.clone() for t in written]
    if inv_grad_scale is not None:
        grad.mul_(inv_grad_scale)  # what an unscale pass over the gradients stores
    value = master if master is not None else param.to(exp_avg.dtype)
    value, m, v, s, v_max = adabalance_update(
        value, grad, exp_avg, exp_avg_sq, exp_avg_lr, max_exp_avg_sq, hyper
    )
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    exp_avg_lr.copy_(s)
    if max_exp_avg_sq is not None:
        max_exp_avg_sq.copy_(v_max)
    write_param(param, master, value, write_mode)
    if found_inf is not None:
        keep = found_inf != 0
        for tensor, old in zip(written, saved, strict=True):
            tensor.copy_(torch.where(keep, old, tensor))


def _adabalance_kernel(
    chunk: tuple[KernelTensors, ...],
    hyper: Tensor,
    inv_grad_scale: Tensor | None,
    found_inf: Tensor | None,
    write_mode: int,
) -> None:
    for tensors in chunk:  # unrolled by dynamo: one graph, one C++/Triton kernel call per chunk
        _step_tensor(tensors, hyper, inv_grad_scale, found_inf, write_mode)


@functools.cache
def _compiled_kernel(variant: KernelVariant) -> Callable[..., None]:
    """The compiled kernel for one variant, under a code object of its own (see
    ``_compile.compile_variant``)."""
    name = "_adabalance_kernel_" + "_".join(str(part).replace(".", "_") for part in variant)
    # With dynamic sizes inductor decides at compile time, from the first call's size, whether
    # to parallelise; a first call on a bias would give a one-thread kernel for every tensor.
    # dynamic_threads lets the OpenMP runtime decide per call instead.
    import torch._inductor.config as inductor_config

    options = {"cpp.dynamic_threads": True}
    low_precision_unscale = variant.unscale and variant.grad_dtype in LOW_PRECISION_DTYPES
    if low_precision_unscale and hasattr(inductor_config, "emulate_precision_casts"):
        # Inductor would otherwise use the unscaled gradient before its rounding to fp16/bf16,
        # where an unscale pass (and the per-tensor path) uses the rounded value.
        options["emulate_precision_casts"] = True
    return compile_variant(_adabalance_kernel, name, options, DISTINCT_SIZES)


def fused_kernel_supports(tensors: list[Tensor]) -> bool:
    """Whether the compiled kernel takes these tensors (contiguous, at least 2 elements).

    Single elements would make ``dynamic=True`` specialise and recompile; they and
    non-contiguous tensors take the per-tensor path instead.
    """
    return all(t.is_contiguous() and t.numel() >= 2 for t in tensors)


def _run_kernel(
    variant: KernelVariant,
    members: list[KernelTensors],
    hyper: Tensor,
    inv_grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Step ``members`` in calls of ``_CHUNK``, the last one filled with scratch tensors."""
    failure = (
        f"AdaBalance(fused=True) could not compile or run its torch.compile kernel for "
        f"{variant.param_dtype} parameters with {variant.grad_dtype} gradients on "
        f"{variant.device_type} (it needs a C++ compiler on CPU, Triton on CUDA; the error "
        f"below says whether that is the cause). Use foreach=True, or fused=False."
    )
    what = f"AdaBalance(fused=True)'s step for {variant.param_dtype} on {variant.device_type}"
    for start in range(0, len(members), _CHUNK):
        chunk = tuple(members[start : start + _CHUNK])
        if len(chunk) < _CHUNK:
            chunk += _scratch(variant, chunk[0].param.device)[: _CHUNK - len(chunk)]
        # Positional: a keyword call costs ~5 us more in torch.compile's wrapper.
        args = (chunk, hyper, inv_grad_scale, found_inf, variant.write_mode)
        run_compiled(variant, lambda: _compiled_kernel(variant), args, what=what, failure=failure)


@functools.cache
def _scratch(variant: KernelVariant, device: torch.device) -> tuple[KernelTensors, ...]:
    """Tensors that fill a short chunk: 16 zeros each, in the variant's dtypes, none shared.

    From zeros the update stays finite (``v`` stays 0, so the rate sits at its upper bound and
    moves nothing), whatever the step and the hyper-parameters.
    """

    def zeros(dtype: torch.dtype) -> Tensor:
        return torch.zeros(_SCRATCH_NUMEL, dtype=dtype, device=device)

    state = variant.compute_dtype
    return tuple(
        KernelTensors(
            param=zeros(variant.param_dtype),
            grad=zeros(variant.grad_dtype),
            exp_avg=zeros(state),
            exp_avg_sq=zeros(state),
            exp_avg_lr=zeros(state),
            max_exp_avg_sq=zeros(state) if variant.amsbound else None,
            master=zeros(state) if variant.write_mode == _WRITE_MASTER else None,
        )
        for _ in range(_CHUNK - 1)
    )


def _fused_adabalance(
    *,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_lrs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    master_params: list[Tensor] | None,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    hyper: Hyper,
    has_complex: bool,
    aliases: FlatAliases | None = None,
) -> None:
    if has_complex:
        raise RuntimeError(
            "AdaBalance(fused=True) does not take complex parameters; use foreach=True or "
            "fused=False, which optimize them as their real view"
        )
    if not params:
        return
    kept = aliases if aliases is not None else flat  # the 1-D aliases of persistent tensors
    torch._foreach_add_(state_steps, 1)
    vectors = KernelScalarsCache(hyper)
    # GradScaler's tensors, per device and compute dtype: 1 / grad_scale and found_inf.
    amp_cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor | None, Tensor | None]] = {}
    # Per (step, device, param dtype, grad dtype): the (variant, key) group, its scalars and amp.
    signatures: dict[tuple, tuple[tuple, Tensor, tuple[Tensor | None, Tensor | None]]] = {}
    # Concatenated copies of p, g, m, v, s (and max_exp_avg_sq, master) are the temporaries:
    # bounded like the foreach path's.
    copies_per_element = 5 + hyper.amsbound + (master_params is not None)
    batch_budget = transient_budget([p.numel() for p in params]) // copies_per_element
    # Per (variant, key): the large tensors, and the small ones waiting to be concatenated into
    # one member of a chunk; _run_kernel splits them into chunks at the end.
    large: dict[tuple, list[KernelTensors]] = {}
    small: dict[tuple, tuple[list[KernelTensors], int]] = {}
    for i, param in enumerate(params):
        grad = grads[i]
        # The step count is a CPU tensor: no device synchronisation.
        signature = (state_steps[i].item(), param.device, param.dtype, grad.dtype)
        if signature not in signatures:
            group = _group_of(signature, hyper, master_params is not None, grad_scale, found_inf)
            amp_key = group[1][1:]
            if amp_key not in amp_cache:
                amp_cache[amp_key] = _amp_tensors(grad_scale, found_inf, *amp_key)
            signatures[signature] = (group, vectors.vector(*group[1]), amp_cache[amp_key])
        group, vector, amp = signatures[signature]
        tensors = KernelTensors(
            param=kept(param),
            grad=flat(grad),
            exp_avg=kept(exp_avgs[i]),
            exp_avg_sq=kept(exp_avg_sqs[i]),
            exp_avg_lr=kept(exp_avg_lrs[i]),
            max_exp_avg_sq=kept(max_exp_avg_sqs[i]) if hyper.amsbound else None,
            master=None if master_params is None else kept(master_params[i]),
        )
        numel = tensors.param.numel()  # a DTensor's local shard: what the temporaries hold
        if numel >= _BATCH_NUMEL or numel > batch_budget:
            large.setdefault(group, []).append(tensors)
            continue
        batch, batch_numel = small.get(group, ([], 0))
        if batch_numel + numel > batch_budget:
            _run_batched(group[0], batch, vector, amp)
            batch, batch_numel = [], 0
        batch.append(tensors)
        small[group] = (batch, batch_numel + numel)
    for group in dict.fromkeys([*large, *small]):
        variant, key = group
        batch = small.get(group, ([], 0))[0]
        vector = vectors.vector(*key)
        _run_batched(variant, batch, vector, amp_cache[key[1:]], large.get(group, []))
    if found_inf is not None:
        # A skipped step does not count, as in torch's fused Adam. The counters live on the CPU,
        # so for accelerator tensors this copy of found_inf is the step's one synchronisation,
        # made after every kernel has been queued.
        skipped = (found_inf != 0).to(device=state_steps[0].device, dtype=state_steps[0].dtype)
        torch._foreach_sub_(state_steps, [skipped] * len(state_steps))


def _group_of(
    signature: tuple,
    hyper: Hyper,
    master_weights: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> tuple[KernelVariant, tuple[float, torch.device, torch.dtype]]:
    """The ``(variant, (step, device, compute dtype))`` of the tensors with ``signature``,
    ``(step, device, param dtype, grad dtype)``: the tensors one compiled call may step."""
    step, device, param_dtype, grad_dtype = signature
    dtype = compute_dtype(param_dtype)
    variant = KernelVariant(
        device_type=device.type,
        param_dtype=param_dtype,
        grad_dtype=grad_dtype,
        compute_dtype=dtype,
        amsbound=hyper.amsbound,
        write_mode=write_mode_of(param_dtype, master_weights, hyper.stochastic_round),
        unscale=grad_scale is not None,
        skip_if_found_inf=found_inf is not None,
    )
    return variant, (step, device, dtype)


def _amp_tensors(
    grad_scale: Tensor | None, found_inf: Tensor | None, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    """GradScaler's ``1 / grad_scale`` and ``found_inf`` as 0-dim tensors for the kernel.

    The reciprocal is taken in the compute dtype, so ``g * inv_grad_scale`` is bitwise what an
    unscale pass multiplying by the Python float ``1 / grad_scale`` gives.
    """
    inv_grad_scale = None
    if grad_scale is not None:
        inv_grad_scale = grad_scale.to(device=device, dtype=dtype, non_blocking=True).reciprocal()
    if found_inf is not None:
        found_inf = found_inf.to(device=device, non_blocking=True)
    return inv_grad_scale, found_inf


def _run_batched(
    variant: KernelVariant,
    batch: list[KernelTensors],
    hyper: Tensor,
    amp: tuple[Tensor | None, Tensor | None],
    large: Sequence[KernelTensors] = (),
) -> None:
    """Step the small tensors of ``batch`` as one member, concatenated, with ``large``.

    The per-call cost of a compiled kernel (tens of microseconds of guards and wrappers) is more
    than the work on a bias or norm weight; the copies cost little at these sizes.
    """
    if len(batch) <= 1:
        _run_kernel(variant, [*large, *batch], hyper, *amp)
        return
    columns = KernelTensors(*zip(*batch, strict=True))
    joined = KernelTensors(*(None if c[0] is None else torch.cat(c) for c in columns))
    _run_kernel(variant, [*large, joined], hyper, *amp)
    sizes = [tensor.numel() for tensor in columns.param]
    for name in _WRITTEN_UNSCALED if variant.unscale else _WRITTEN:
        written = getattr(joined, name)
        if written is not None:
            torch._foreach_copy_(list(getattr(columns, name)), list(written.split(sizes)))
