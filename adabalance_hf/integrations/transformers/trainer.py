"""``AdaBalanceTrainer`` and the mixin that gives any Trainer subclass the AdaBalance names.

What it adds to a Trainer, and nothing else: the optimizer for the AdaBalance ``optim`` names
(with the fine-tuning defaults), the diagnostics callback, and two checks before the first step
(the launch really has the processes it announced; the optimizer holds the model's trainable
parameters). Crash-safe checkpoints are a piece of their own:
:class:`~adabalance_hf.integrations.transformers.AtomicCheckpointsMixin`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import TrainOutput

from ...distributed.launch_checks import check_trainer_launch
from ...optim import StateDictMismatchError
from ._mixin import OrderFreeMixin
from ._private_api import LOAD_OPTIMIZER_AND_SCHEDULER
from .callback import AdaBalanceDiagnosticsCallback, add_diagnostics_callback
from .kwargs import adabalance_optimizer_kwargs
from .optim_names import is_adabalance_name, optimizer_class
from .optimizer_coverage import TrainableParametersCheck

__all__ = ["AdaBalanceTrainer", "AdaBalanceTrainerMixin"]


def _init(self: Trainer, parent: Any, *args: Any, adabalance_diagnostics: bool = True,
          **kwargs: Any) -> None:  # fmt: skip
    parent(*args, **kwargs)
    callbacks = self.callback_handler.callbacks
    if adabalance_diagnostics or any(
        isinstance(cb, AdaBalanceDiagnosticsCallback) for cb in callbacks
    ):
        add_diagnostics_callback(self)  # it checks the optimizer's parameters too
    elif not any(isinstance(cb, TrainableParametersCheck) for cb in callbacks):
        self.add_callback(TrainableParametersCheck())


def _get_optimizer_cls_and_kwargs(
    parent: Any, args: TrainingArguments, model: nn.Module | None = None
) -> tuple[Any, dict[str, Any]]:
    """Return the optimizer class and its keyword arguments for ``args.optim``.

    Args:
        args (TrainingArguments): the training arguments.
        model (nn.Module, optional): the model; needed by some built-in optimizers.

    Returns:
        tuple: ``(AdaBalance or AdaBalance8bit, adabalance_optimizer_kwargs(args))`` for an
        AdaBalance name, else
        what ``Trainer.get_optimizer_cls_and_kwargs`` returns.
    """
    if is_adabalance_name(args.optim):
        return optimizer_class(args.optim), adabalance_optimizer_kwargs(args)
    return parent(args, model)


def _train(self: Trainer, parent: Any, *args: Any, **kwargs: Any) -> TrainOutput:
    """``Trainer.train``, after checking that the launch has the processes it announced."""
    check_trainer_launch(self.args)
    return parent(*args, **kwargs)


def _load_optimizer_and_scheduler(self: Trainer, parent: Any, checkpoint: str | None) -> None:
    try:
        parent(checkpoint)
    except StateDictMismatchError as error:
        raise StateDictMismatchError(
            f"resume_from_checkpoint={checkpoint!r}: its optimizer state was not written by "
            f"AdaBalance ({error}), so it cannot be resumed with optim={self.args.optim!r}. "
            f"Either resume with the optimizer that wrote it (the optim of that run, e.g. "
            f"--optim adamw_torch), or start AdaBalance from those weights with fresh optimizer "
            f"state: load the model from the checkpoint folder (from_pretrained({checkpoint!r}), "
            f"or --model_name_or_path {checkpoint}) and train without resume_from_checkpoint."
        ) from error


class AdaBalanceTrainerMixin(OrderFreeMixin):
    """Give a ``transformers.Trainer`` subclass the AdaBalance optimizer names.

    Mix it into any Trainer subclass, in either order, and pair it with arguments that have
    :class:`AdaBalanceArgumentsMixin`::

        class MyTrainer(AdaBalanceTrainerMixin, trl.KTOTrainer):
            pass

    For an AdaBalance ``optim`` name the Trainer builds AdaBalance with
    ``adabalance_optimizer_kwargs(args)`` (grouped as ``Trainer.create_optimizer`` groups: no
    weight decay on biases and LayerNorm/RMSNorm weights); built-in names, ``optimizers=`` and
    ``optimizer_cls_and_kwargs=`` work as in ``Trainer``. It adds:

    * ``adabalance_diagnostics=True`` (a keyword argument of the constructor): an
      :class:`AdaBalanceDiagnosticsCallback` that adds the bounds and the fractions of elements
      at them to the logs;
    * at ``train()``, before anything else, :func:`~adabalance_hf.distributed.check_trainer_launch`:
      a launch that announced ``N`` processes but built another world (``accelerate launch
      --config_file recipes/configs/multi_cpu.yaml`` without ``--use_cpu true``: every rank
      training alone into one output folder) stops with the fix;
    * at train start, :func:`check_optimizer_holds_trainable_parameters`: an optimizer object
      that holds none of the model's trainable parameters (built before PEFT wrapped the
      model) is an error, one that misses some a warning;
    * on resume, an optimizer state another optimizer wrote raises
      :class:`~adabalance_hf.optim.StateDictMismatchError` that says what to do in a Trainer.
    """

    _order_free: ClassVar[dict[str, Any]] = {
        "__init__": _init,
        "get_optimizer_cls_and_kwargs": staticmethod(_get_optimizer_cls_and_kwargs),
        "train": _train,
        LOAD_OPTIMIZER_AND_SCHEDULER: _load_optimizer_and_scheduler,
    }


class AdaBalanceTrainer(AdaBalanceTrainerMixin, Trainer):
    """``transformers.Trainer`` with the AdaBalance optimizer names.

    Use with :class:`AdaBalanceTrainingArguments` (``optim="adabalance"``,
    ``--optim adabalance``, options in ``optim_args``); see :class:`AdaBalanceTrainerMixin`.
    For crash-safe checkpoints add :class:`AtomicCheckpointsMixin`:
    ``class MyTrainer(AtomicCheckpointsMixin, AdaBalanceTrainer): pass``.

    Args:
        *args: positional arguments of ``transformers.Trainer``.
        adabalance_diagnostics (bool, optional): install an
            :class:`AdaBalanceDiagnosticsCallback`. Default: ``True``
        **kwargs: keyword arguments of ``transformers.Trainer``.
    """
