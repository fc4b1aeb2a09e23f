"""``AdaBalanceTrainer``: a Trainer that knows the AdaBalance optimizer names."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import Trainer, TrainingArguments

from ...optim import AdaBalance
from .callback import add_diagnostics_callback
from .kwargs import adabalance_optimizer_kwargs
from .optim_names import is_adabalance_name

__all__ = ["AdaBalanceTrainer"]


class AdaBalanceTrainer(Trainer):
    """``transformers.Trainer`` that builds AdaBalance for the AdaBalance ``optim`` names.

    Use with :class:`AdaBalanceTrainingArguments` (``optim="adabalance"``, ``--optim adabalance``,
    ...). Built-in names go to ``Trainer.get_optimizer_cls_and_kwargs`` unchanged, and the
    ``optimizers=`` and ``optimizer_cls_and_kwargs=`` arguments work as in ``Trainer``.
    Parameters are grouped by ``Trainer.create_optimizer`` as usual: no weight decay on biases
    and LayerNorm/RMSNorm weights.

    Args:
        *args: positional arguments of ``transformers.Trainer``.
        adabalance_diagnostics (bool, optional): install an
            :class:`AdaBalanceDiagnosticsCallback` that adds the bounds and the fractions of
            elements at them to the logs. Default: ``True``
        **kwargs: keyword arguments of ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, adabalance_diagnostics: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if adabalance_diagnostics:
            add_diagnostics_callback(self)

    @staticmethod
    def get_optimizer_cls_and_kwargs(
        args: TrainingArguments, model: nn.Module | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Return the optimizer class and its keyword arguments for ``args.optim``.

        Args:
            args (TrainingArguments): the training arguments.
            model (nn.Module, optional): the model; needed by some built-in optimizers.

        Returns:
            tuple: ``(AdaBalance, adabalance_optimizer_kwargs(args))`` for an AdaBalance name,
            else what ``Trainer.get_optimizer_cls_and_kwargs`` returns.
        """
        if is_adabalance_name(args.optim):
            return AdaBalance, adabalance_optimizer_kwargs(args)
        return Trainer.get_optimizer_cls_and_kwargs(args, model)
