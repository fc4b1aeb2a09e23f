"""The decay / no-decay parameter groups: no weight decay on biases and LayerNorm/RMSNorm weights.

The one home of the rule, shared by the Trainer integration, ``create_optimizer`` and the
recipes. It is transformers' own (``Trainer.get_decay_parameter_names``), imported when called.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

__all__ = ["param_groups", "trainer_param_groups"]


def trainer_param_groups(
    model: nn.Module, weight_decay: float, *, trainer_cls: type | None = None
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
    # (transformers 4.57 to 5.25); calling it unbound avoids building a Trainer just for it.
    if trainer_cls is None:
        from transformers import Trainer

        trainer_cls = Trainer
    decay_names = set(trainer_cls.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for name, p in named if name in decay_names], "weight_decay": weight_decay},
        {"params": [p for name, p in named if name not in decay_names], "weight_decay": 0.0},
    ]


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    no_decay: Iterable[str | type[nn.Module]] = (),
    trainer_cls: type | None = None,
) -> list[dict[str, Any]]:
    """Return the non-empty decay / no-decay parameter groups of ``model``.

    The rule is the Trainer's (``trainer_param_groups``: no weight decay on biases and
    LayerNorm/RMSNorm weights), extended by ``no_decay``.

    Args:
        model (nn.Module): the model (plain, DDP-wrapped, or sharded with ``fully_shard``).
        weight_decay (float): weight decay of the decay group.
        no_decay (iterable of str or module types, optional): more parameters without weight
            decay: a string is a regular expression searched (case-insensitively) in the full
            parameter name, e.g. ``"embeddings"``; a module class excludes the
            parameters of every module of that class (e.g. ``nn.Embedding``). Default: ``()``
        trainer_cls (type, optional): the ``transformers.Trainer`` subclass whose
            ``get_decay_parameter_names`` defines the rule. Default: ``transformers.Trainer``

    Returns:
        list[dict]: ``{"params": [...], "weight_decay": ...}`` groups, empty ones left out.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or a ``no_decay`` entry is neither a
            string nor an ``nn.Module`` subclass.
        ValueError: if ``model`` has no parameter with ``requires_grad=True``.
    """
    from transformers import Trainer

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"create_optimizer: `model` must be a torch.nn.Module, got {type(model).__name__}; "
            f"pass the model itself (not model.parameters())"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"create_optimizer: `model` ({type(model).__name__}) has no trainable parameters "
            f"(none with requires_grad=True); unfreeze some (p.requires_grad_(True)) before "
            f"building the optimizer"
        )
    patterns: list[re.Pattern[str]] = []
    module_types: list[type[nn.Module]] = []
    for entry in no_decay:
        if isinstance(entry, str):
            patterns.append(re.compile(entry, re.IGNORECASE))
        elif isinstance(entry, type) and issubclass(entry, nn.Module):
            module_types.append(entry)
        else:
            raise TypeError(
                f"create_optimizer: `no_decay` entries must be regular-expression strings or "
                f"nn.Module subclasses, got {entry!r}"
            )
    base = trainer_cls if trainer_cls is not None else Trainer
    if patterns or module_types:
        excluded = {
            f"{module_name}.{name}" if module_name else name
            for module_name, module in model.named_modules()
            if isinstance(module, tuple(module_types))
            for name, _ in module.named_parameters(recurse=False)
        }

        def decay_names(self: Any, model: nn.Module) -> list[str]:
            names = base.get_decay_parameter_names(self, model)
            return [
                name
                for name in names
                if name not in excluded and not any(p.search(name) for p in patterns)
            ]

        name = f"{base.__name__}WithNoDecay"
        rule = type(name, (base,), {"get_decay_parameter_names": decay_names})
    else:
        rule = base
    groups = trainer_param_groups(model, weight_decay, trainer_cls=rule)
    return [group for group in groups if group["params"]]
