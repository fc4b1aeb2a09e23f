"""``AdaBalanceTrainingArguments``: training arguments plus AdaBalance's names and options.

transformers converts ``optim`` with ``OptimizerNames(...)`` in ``TrainingArguments.__post_init__``
and ``HfArgumentParser`` builds the ``--optim`` choices from that enum, so a new name cannot pass
through the stock class. This subclass redeclares ``optim`` as a ``str`` with its own choices,
lets the parent validate everything else with a built-in placeholder name, and then puts the
AdaBalance name back. Built-in names go through the parent unchanged.
"""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types at runtime.

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from ...optim import AdaBalance
from .optim_args import parse_optim_args
from .optim_names import (
    adabalance_optimizer_names,
    all_optimizer_names,
    check_optimizer_name,
    default_optimizer_name,
    is_adabalance_name,
    optimizer_name_value,
    variant_kwargs,
)

__all__ = ["AdaBalanceTrainingArguments"]

# Any built-in name works as the placeholder: the parent only converts and stores it.
_PLACEHOLDER = OptimizerNames.ADAMW_TORCH.value
_DEFAULTS = {
    name: parameter.default for name, parameter in inspect.signature(AdaBalance).parameters.items()
}
# field name -> AdaBalance keyword
_FLOAT_FIELDS = {
    "adabalance_final_lr": "final_lr",
    "adabalance_gamma": "gamma",
    "adabalance_beta3": "beta3",
}
_BOOL_FIELDS = {
    "adabalance_amsbound": "amsbound",
    "adabalance_decoupled_weight_decay": "decoupled_weight_decay",
}
# A bare ``--adabalance_amsbound`` means true, as for transformers' own bool flags.
_BOOL_FLAG = {"nargs": "?", "const": True}


@dataclass
class AdaBalanceTrainingArguments(TrainingArguments):
    """``TrainingArguments`` that also accept the AdaBalance optimizer names and options.

    Use with :class:`AdaBalanceTrainer`. ``optim`` accepts transformers' built-in names and
    ``adabalance`` (reference AdaBalance, L2 weight decay), ``adabalance_amsbound``,
    ``adabalancew`` (AdamW-style decoupled weight decay), ``adabalancew_amsbound`` and, when
    the installed AdaBalance has ``fused``, ``adabalance_fused`` and ``adabalancew_fused``.

    With an AdaBalance name the optimizer gets ``lr=learning_rate``,
    ``betas=(adam_beta1, adam_beta2)``, ``eps=adam_epsilon``, ``weight_decay`` (the Trainer
    exempts biases and norm weights) and AdaBalance's own options, taken in this order, each
    later source filling in what the earlier ones left open: the variant of the name, the
    ``adabalance_*`` fields below, and ``optim_args`` (e.g.
    ``"final_lr=0.05,gamma=1e-3,beta3=0.999,amsbound=true,decoupled_weight_decay=true"``).
    Setting one option to two different values in two of these places is an error.

    Args:
        optim (str, optional): optimizer name. Default: transformers' default.
        adabalance_final_lr (float, optional): the SGD rate AdaBalance's bounds converge to.
            Default: ``0.1``
        adabalance_gamma (float, optional): convergence speed of the bounds; ``0`` disables
            them. Default: ``1e-3``
        adabalance_beta3 (float, optional): decay rate of the smoothed step size.
            Default: ``0.999``
        adabalance_amsbound (bool, optional): use AMSBound's running maximum; ``None`` takes it
            from the optimizer name. Default: ``None``
        adabalance_decoupled_weight_decay (bool, optional): AdamW-style weight decay; ``None``
            takes it from the optimizer name. Default: ``None``
        resume_from_checkpoint (str, optional): not used by the Trainer itself; scripts pass it
            to :meth:`AdaBalanceTrainer.train`, which also accepts ``"auto"`` (the newest
            complete checkpoint in ``output_dir``, or a fresh start). Default: ``None``

    Raises:
        ValueError: at construction (so at argument-parsing time) for an unknown ``optim`` (the
            message lists the valid names), a bad ``optim_args`` key or value, conflicting
            settings, or a hyper-parameter AdaBalance rejects.
    """

    optim: str = field(
        default=default_optimizer_name(),
        metadata={
            "help": "The optimizer to use: one of transformers' names or an AdaBalance name ("
            + ", ".join(adabalance_optimizer_names())
            + ").",
            "choices": list(all_optimizer_names()),
        },
    )
    adabalance_final_lr: float = field(
        default=_DEFAULTS["final_lr"],
        metadata={"help": "AdaBalance: the final (SGD) learning rate the bounds converge to."},
    )
    adabalance_gamma: float = field(
        default=_DEFAULTS["gamma"],
        metadata={"help": "AdaBalance: convergence speed of the bounds (0 disables them)."},
    )
    adabalance_beta3: float = field(
        default=_DEFAULTS["beta3"],
        metadata={"help": "AdaBalance: decay rate of the smoothed step size (AdaMod)."},
    )
    adabalance_amsbound: bool | None = field(
        default=None,
        metadata={
            "help": "AdaBalance: use AMSBound's running maximum of the second moment "
            "(unset: from the optimizer name).",
            **_BOOL_FLAG,
        },
    )
    adabalance_decoupled_weight_decay: bool | None = field(
        default=None,
        metadata={
            "help": "AdaBalance: AdamW-style decoupled weight decay instead of L2 "
            "(unset: from the optimizer name).",
            **_BOOL_FLAG,
        },
    )

    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Passed by the recipes to AdaBalanceTrainer.train: a checkpoint-N folder "
            "(verified against its manifest), or 'auto' for the newest complete checkpoint in "
            "output_dir (damaged ones are skipped), starting from scratch when there is none."
        },
    )

    def __post_init__(self) -> None:
        name = check_optimizer_name(self.optim)
        if not is_adabalance_name(name):
            super().__post_init__()
            self._warn_unused_adabalance_fields(name)
            return
        self.optim = _PLACEHOLDER
        super().__post_init__()
        self.optim = name
        self._check_adabalance_options()

    def _warn_unused_adabalance_fields(self, name: str) -> None:
        """``--adabalance_*`` flags with another optimizer would be ignored: say so."""
        unused = [f for f, key in _FLOAT_FIELDS.items() if getattr(self, f) != _DEFAULTS[key]]
        unused += [f for f in _BOOL_FIELDS if getattr(self, f) is not None]
        if unused:
            warnings.warn(
                f"optim={name!r} is not AdaBalance, so {', '.join(unused)} will be ignored; "
                f"pass optim='adabalance' (or another AdaBalance name) to use them, or drop them",
                UserWarning,
                stacklevel=3,
            )

    def set_optimizer(
        self,
        name: str | OptimizerNames = "adamw_torch",
        learning_rate: float = 5e-5,
        weight_decay: float = 0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        args: str | None = None,
    ) -> "AdaBalanceTrainingArguments":
        """Set the optimizer and its hyper-parameters, accepting AdaBalance names too.

        Args:
            name (str or OptimizerNames, optional): optimizer name. Default: ``"adamw_torch"``
            learning_rate (float, optional): initial learning rate. Default: ``5e-5``
            weight_decay (float, optional): weight decay. Default: ``0``
            beta1 (float, optional): ``adam_beta1``. Default: ``0.9``
            beta2 (float, optional): ``adam_beta2``. Default: ``0.999``
            epsilon (float, optional): ``adam_epsilon``. Default: ``1e-8``
            args (str, optional): ``optim_args``. Default: ``None``
        """
        value = check_optimizer_name(name)
        adabalance = is_adabalance_name(value)
        super().set_optimizer(
            _PLACEHOLDER if adabalance else value,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            beta1=beta1,
            beta2=beta2,
            epsilon=epsilon,
            args=args,
        )
        if adabalance:
            self.optim = value
            self._check_adabalance_options()
        return self

    def adabalance_options(self) -> dict[str, Any]:
        """Return AdaBalance's own keyword arguments (no ``lr``/``betas``/``eps``/``weight_decay``).

        Merges the variant of an AdaBalance ``optim`` name, the ``adabalance_*`` fields and, for
        an AdaBalance ``optim`` name, ``optim_args``.

        Raises:
            ValueError: if two sources set one option to different values, or ``optim_args``
                has an unknown key or a bad value.
        """
        adabalance = is_adabalance_name(self.optim)
        options: dict[str, Any] = {key: getattr(self, f) for f, key in _FLOAT_FIELDS.items()}
        explicit = {key: options[key] for key in options if options[key] != _DEFAULTS[key]}
        for name, key in _BOOL_FIELDS.items():
            if getattr(self, name) is not None:
                explicit[key] = getattr(self, name)
        sources: list[tuple[str, dict[str, Any]]] = [("the adabalance_* fields", explicit)]
        if adabalance:
            name = optimizer_name_value(self.optim)
            sources.insert(0, (f"optim={name!r}", variant_kwargs(name)))
            sources.append((f"optim_args={self.optim_args!r}", parse_optim_args(self.optim_args)))
        origin: dict[str, str] = {}
        for source, values in sources:
            for key, value in values.items():
                if key in origin and options[key] != value:
                    raise ValueError(
                        f"AdaBalance option {key!r} is set to {options[key]!r} by "
                        f"{origin[key]} and to {value!r} by {source}; set it in one place only"
                    )
                options[key] = value
                origin[key] = source
        return options

    def _check_adabalance_options(self) -> None:
        # Imported here: kwargs.py imports this module.
        from .kwargs import adabalance_optimizer_kwargs

        kwargs = adabalance_optimizer_kwargs(self)
        probe = torch.zeros(1, requires_grad=True)
        try:
            # A throw-away construction runs AdaBalance's own range checks now, at parsing time,
            # instead of at the first training step. Its warnings repeat at the real construction.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                AdaBalance([probe], **kwargs)
        except (ValueError, RuntimeError) as error:
            raise ValueError(
                f"AdaBalanceTrainingArguments(optim={self.optim!r}): {error}. The AdaBalance "
                f"arguments were {kwargs}, built from learning_rate, adam_beta1, adam_beta2, "
                f"adam_epsilon, weight_decay, the adabalance_* fields and optim_args."
            ) from error
