"""``create_optimizer``: AdaBalance with transformers-style parameter groups, for every engine."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch.distributed as dist
from torch import Tensor, nn

from ..decay_groups import param_groups
from ..names import adabalance_cls_and_kwargs
from ..optim import AdaBalance
from .launch_checks import check_launch

if TYPE_CHECKING:
    from torch.distributed.optim import ZeroRedundancyOptimizer

__all__ = ["Sharding", "create_optimizer"]

Sharding = Literal["none", "zero1", "fsdp2"]
_SHARDINGS = ("none", "zero1", "fsdp2")


def _adabalance_arguments(optimizer_class: type[AdaBalance] = AdaBalance) -> list[str]:
    return [name for name in inspect.signature(optimizer_class).parameters if name != "params"]


def _is_dtensor(param: Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(param, DTensor)


def create_optimizer(
    model: nn.Module,
    lr: float | Tensor = 1e-3,
    weight_decay: float = 0.0,
    *,
    no_decay: Iterable[str | type[nn.Module]] = (),
    sharding: Sharding = "none",
    process_group: dist.ProcessGroup | None = None,
    trainer_cls: type | None = None,
    check_setup: bool | Literal["warn", "error"] = True,
    optimizer_class: type[AdaBalance] = AdaBalance,
    optim: str | None = None,
    optim_args: str | None = None,
    **adabalance_kwargs: Any,
) -> AdaBalance | ZeroRedundancyOptimizer:
    """Build AdaBalance for ``model`` with transformers-style decay / no-decay parameter groups.

    The result is ready for ``accelerator.prepare(model, optimizer, ...)`` (gradient
    accumulation, ``accelerator.clip_grad_norm_``), for a DDP-wrapped model, for DeepSpeed as a
    client optimizer (``deepspeed.initialize(model=model, optimizer=optimizer, ...)`` with
    ``"zero_allow_untested_optimizer": true``), and, with ``sharding``, for ZeRO-1 and FSDP2.

    The optimizer does not clip gradients. With the fine-tuning settings (``beta3`` 0.9-0.99,
    ``gamma=1e-4``, as under ``optim``) clip them in your loop, e.g.
    ``torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)`` (``accelerator.clip_grad_norm_``),
    as the Trainer does by default: the smoothed step size of elements whose first gradients were
    tiny stays near the upper bound (about ``final_lr / (gamma * step)``, thousands of times
    Adam's), and without clipping a tiny GPT-2 at lr 3e-3 diverged within 5-30 steps on 2 to 3 of
    8 seeds (every seed trained with clipping; ``benchmarks/results/stability_envelope.md``). With
    ``beta3=0.9`` at lr 3e-3 even clipped runs diverged there; ``gamma=1e-3`` trained.

    Args:
        model (nn.Module): the model to optimize. For FSDP2, the model after ``fully_shard``.
        lr (float or Tensor, optional): learning rate (also the groups' ``base_lr``).
            Default: ``1e-3``
        weight_decay (float, optional): weight decay of the decay group; biases and
            LayerNorm/RMSNorm weights get none (the Trainer's rule). Default: ``0.0``
        no_decay (iterable of str or module types, optional): more parameters without weight
            decay: regular expressions searched case-insensitively in parameter names, or
            module classes. Default: ``()``
        sharding (str, optional): ``"none"``: a plain AdaBalance (single process, DDP,
            DeepSpeed, accelerate); ``"zero1"``: a
            ``torch.distributed.optim.ZeroRedundancyOptimizer`` with
            ``optimizer_class=AdaBalance`` (optimizer state sharded by whole tensors; needs an
            initialised process group); ``"fsdp2"``: checks that the model was sharded with
            ``fully_shard`` first (all trainable parameters are DTensors), so that the
            optimizer holds the sharded parameters and its state is sharded too.
            Default: ``"none"``
        process_group (ProcessGroup, optional): the group ZeRO-1 shards over. Default: the
            default group
        trainer_cls (type, optional): a ``transformers.Trainer`` subclass whose
            ``get_decay_parameter_names`` defines the rule. Default: ``transformers.Trainer``
        check_setup (bool or str, optional): ``True`` or ``"warn"``: run :func:`check_launch`
            and warn about launches that silently run fewer processes than requested or drop a
            requested engine; ``"error"``: raise :class:`DistributedSetupError` instead (for
            scripts that must not train on a wrong launch, like the recipes); ``False``: no
            check. Default: ``True``
        optimizer_class (type, optional): :class:`~adabalance_hf.AdaBalance` or
            :class:`~adabalance_hf.AdaBalance8bit` or :class:`~adabalance_hf.AdaBalance4bit`
            (low-bit state; they take ``block_size``).
            Default: :class:`~adabalance_hf.AdaBalance`
        optim (str, optional): an AdaBalance optimizer name instead of ``optimizer_class``
            (``"adabalancew_8bit"``, ...): the class, the variant and the fine-tuning defaults
            come from :func:`~adabalance_hf.adabalance_cls_and_kwargs`, as for the Trainer's
            ``optim``. Default: ``None`` (``optimizer_class`` with its own defaults)
        optim_args (str, optional): with ``optim``, its options as ``"key=value,..."``.
            Default: ``None``
        **adabalance_kwargs: other arguments of the optimizer class (``final_lr``, ``gamma``,
            ``betas``, ``foreach``, ``fused``, ...); with ``optim`` they replace the name's.

    Returns:
        AdaBalance or ZeroRedundancyOptimizer: the optimizer.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or an argument is not an AdaBalance
            argument (the message lists the valid ones).
        ValueError: if the model has no trainable parameters, ``sharding`` is unknown,
            ``sharding="fsdp2"`` is requested for a model that is not sharded, or
            ``sharding="zero1"`` for one that is.
        RuntimeError: if ``sharding="zero1"`` is requested without an initialised process group.
        DistributedSetupError: with ``check_setup="error"``, if :func:`check_launch` finds a
            problem (the message names each and its fix).
    """
    if optim is not None:
        if optimizer_class is not AdaBalance:
            raise TypeError(
                f"create_optimizer: pass `optim` ({optim!r}) or `optimizer_class` "
                f"({optimizer_class.__name__}), not both: the name picks the class"
            )
        optimizer_class, adabalance_kwargs = adabalance_cls_and_kwargs(
            optim, lr=lr, weight_decay=weight_decay, optim_args=optim_args, **adabalance_kwargs
        )
        lr = adabalance_kwargs.pop("lr")
        adabalance_kwargs.pop("weight_decay")  # the decay group's; the no-decay group has 0
    elif optim_args is not None:
        raise TypeError("create_optimizer: `optim_args` needs `optim` (an AdaBalance name)")
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, AdaBalance)):
        raise TypeError(
            f"create_optimizer: `optimizer_class` must be AdaBalance or a subclass such as "
            f"AdaBalance8bit, got {optimizer_class!r}"
        )
    valid = _adabalance_arguments(optimizer_class)
    unknown = sorted(set(adabalance_kwargs) - set(valid))
    if unknown:
        raise TypeError(
            f"create_optimizer: unknown argument(s) {unknown}; {optimizer_class.__name__} "
            f"accepts {', '.join(valid)} (and create_optimizer: model, lr, weight_decay, "
            f"no_decay, sharding, process_group, trainer_cls, check_setup, optimizer_class, "
            f"optim, optim_args)"
        )
    if not isinstance(check_setup, bool) and check_setup not in ("warn", "error"):
        raise ValueError(
            f"create_optimizer: `check_setup` must be True, False, 'warn' or 'error', got "
            f"{check_setup!r}"
        )
    if sharding not in _SHARDINGS:
        raise ValueError(
            f"create_optimizer: `sharding` must be one of {_SHARDINGS}, got {sharding!r}; "
            f"DDP, DeepSpeed and accelerate take the plain optimizer (sharding='none')"
        )
    groups = param_groups(model, weight_decay, no_decay=no_decay, trainer_cls=trainer_cls)
    trainable = [p for group in groups for p in group["params"]]
    sharded = [_is_dtensor(p) for p in trainable]
    if sharding == "fsdp2" and not all(sharded):
        plain = sum(1 for s in sharded if not s)
        raise ValueError(
            f"create_optimizer(sharding='fsdp2'): {plain} of {len(trainable)} trainable "
            f"parameters are not DTensors: the model is not (fully) sharded. Call "
            f"`torch.distributed.fsdp.fully_shard` on its layers and on the model first, then "
            f"create the optimizer (an optimizer built before fully_shard holds the replaced, "
            f"unsharded parameters and trains nothing)"
        )
    if check_setup:
        action = "error" if check_setup == "error" else "warn"
        check_launch(sharded_model=any(sharded), stacklevel=3, action=action)
    if sharding != "zero1":
        return optimizer_class(groups, lr=lr, **adabalance_kwargs)

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "create_optimizer(sharding='zero1') needs an initialised torch.distributed process "
            "group: call torch.distributed.init_process_group('gloo' on CPU, 'nccl' on GPU) or "
            "create the Accelerator (Accelerator(cpu=True) on CPU) before create_optimizer"
        )
    if any(sharded):
        raise ValueError(
            "create_optimizer(sharding='zero1'): the model's parameters are DTensors (already "
            "sharded with fully_shard); FSDP2 shards the optimizer state itself: use "
            "sharding='fsdp2'"
        )
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(
        groups,
        optimizer_class=optimizer_class,
        process_group=process_group,
        lr=lr,
        **adabalance_kwargs,
    )
