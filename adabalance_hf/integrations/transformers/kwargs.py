"""Keyword arguments and parameter groups for AdaBalance, built from ``TrainingArguments``."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn
from transformers import Trainer, TrainingArguments

from ...optim import AdaBalance

__all__ = ["adabalance_optimizer_kwargs", "trainer_param_groups"]


def adabalance_optimizer_kwargs(args: TrainingArguments, **overrides: Any) -> dict[str, Any]:
    """Build AdaBalance's keyword arguments from training arguments.

    Use with ``Trainer(optimizer_cls_and_kwargs=(AdaBalance, adabalance_optimizer_kwargs(args)))``
    (stock transformers passes those kwargs unchanged and does not add ``lr``: without this
    helper AdaBalance would silently run at its default ``lr=1e-3``) or to construct an
    AdaBalance object for ``Trainer(optimizers=(optimizer, None))``.

    The result holds ``lr=args.learning_rate``, ``betas=(args.adam_beta1, args.adam_beta2)``,
    ``eps=args.adam_epsilon`` and ``weight_decay=args.weight_decay``. For
    :class:`AdaBalanceTrainingArguments` it also holds the AdaBalance options of the
    ``adabalance_*`` fields and, when ``args.optim`` is an AdaBalance name, of that name and
    of ``optim_args``. Stock ``TrainingArguments`` contribute no AdaBalance options: their
    ``optim_args`` belong to their ``optim``; pass the options as ``overrides``.

    Args:
        args (TrainingArguments): the training arguments.
        **overrides: AdaBalance keyword arguments that replace the values above, e.g.
            ``final_lr=0.05``.

    Raises:
        ValueError: if an override is not an AdaBalance keyword argument (the message lists
            them), or the options of :class:`AdaBalanceTrainingArguments` conflict.
    """
    from .training_args import AdaBalanceTrainingArguments

    kwargs: dict[str, Any] = {
        "lr": args.learning_rate,
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
        "weight_decay": args.weight_decay,
    }
    if isinstance(args, AdaBalanceTrainingArguments):
        kwargs.update(args.adabalance_options())
    valid = [name for name in inspect.signature(AdaBalance).parameters if name != "params"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"adabalance_optimizer_kwargs: unknown AdaBalance argument(s) {unknown}; valid "
            f"arguments: {', '.join(valid)}"
        )
    kwargs.update(overrides)
    return kwargs


def trainer_param_groups(
    model: nn.Module, weight_decay: float, *, trainer_cls: type[Trainer] = Trainer
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into decay and no-decay groups as the Trainer does.

    The decay names come from ``trainer_cls.get_decay_parameter_names`` (biases and
    LayerNorm/RMSNorm weights get no weight decay), so an optimizer object built before the
    Trainer groups its parameters exactly like ``Trainer.create_optimizer``.

    Args:
        model (nn.Module): the model to optimize.
        weight_decay (float): weight decay of the decay group (usually ``args.weight_decay``).
        trainer_cls (type, optional): the Trainer class whose ``get_decay_parameter_names`` is
            used, for a subclass that overrides it. Default: ``transformers.Trainer``

    Returns:
        list[dict]: ``[{"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0}]``.
    """
    # get_decay_parameter_names is an instance method that reads nothing from the instance
    # (transformers 4.x to 5.23); calling it unbound avoids building a Trainer just for it.
    decay_names = set(trainer_cls.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for name, p in named if name in decay_names], "weight_decay": weight_decay},
        {"params": [p for name, p in named if name not in decay_names], "weight_decay": 0.0},
    ]
