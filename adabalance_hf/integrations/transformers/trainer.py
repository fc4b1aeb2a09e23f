"""``AdaBalanceTrainer``: a ``transformers.Trainer`` plus what a stock Trainer lacks.

The optimizer names need no Trainer subclass (``import adabalance_hf`` registers them with
transformers). This subclass overrides public methods only, and adds: the diagnostics callback,
the checks at train start (:class:`~.checks.TrainerChecks`: the launch, the optimizer's
parameters), the names even where registering them with transformers failed, and a resume
error that says what to do when the checkpoint's optimizer state is not AdaBalance's.
Crash-safe checkpoints are a piece of their own:
:class:`~adabalance_hf.checkpoint.AtomicCheckpointsMixin`.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import TrainOutput

from ...names import is_adabalance_name
from ...optim import StateDictMismatchError
from .callback import AdaBalanceDiagnosticsCallback, add_diagnostics_callback
from .checks import TrainerChecks
from .registration import optimizer_cls_and_kwargs

__all__ = ["AdaBalanceTrainer"]


class AdaBalanceTrainer(Trainer):
    """``transformers.Trainer`` with AdaBalance's diagnostics and checks.

    Any ``optim`` works as in ``Trainer``; with an AdaBalance name (``optim="adabalance"``,
    ``--optim adabalancew_8bit``, options in ``optim_args``) it builds AdaBalance with the
    fine-tuning defaults, grouped as ``Trainer.create_optimizer`` groups (no weight decay on
    biases and LayerNorm/RMSNorm weights). It adds:

    * ``adabalance_diagnostics=True``: an :class:`AdaBalanceDiagnosticsCallback` that adds the
      bounds and the fractions of elements at them to the logs;
    * at train start, :class:`TrainerChecks`: a launch whose processes each train alone stops
      with the fix; an optimizer object that holds none of the model's trainable parameters
      (built before PEFT wrapped the model) is an error, one that misses some a warning;
    * on resume, an optimizer state another optimizer wrote raises
      :class:`~adabalance_hf.optim.StateDictMismatchError` that says what to do in a Trainer.

    Args:
        *args: positional arguments of ``transformers.Trainer``.
        adabalance_diagnostics (bool, optional): install an
            :class:`AdaBalanceDiagnosticsCallback`. Default: ``True``
        **kwargs: keyword arguments of ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, adabalance_diagnostics: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        callbacks = self.callback_handler.callbacks
        if adabalance_diagnostics or any(
            isinstance(cb, AdaBalanceDiagnosticsCallback) for cb in callbacks
        ):
            add_diagnostics_callback(self)  # it runs the checks too
        elif not any(isinstance(cb, TrainerChecks) for cb in callbacks):
            self.add_callback(TrainerChecks())

    @staticmethod
    def get_optimizer_cls_and_kwargs(
        args: TrainingArguments, model: nn.Module | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Return the optimizer class and kwargs for ``args.optim``, as ``Trainer`` does.

        Args:
            args (TrainingArguments): the training arguments.
            model (nn.Module, optional): the model; needed by some built-in optimizers.
        """
        if is_adabalance_name(args.optim):
            return optimizer_cls_and_kwargs(args, model)
        return Trainer.get_optimizer_cls_and_kwargs(args, model)

    def train(
        self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any
    ) -> TrainOutput:
        """``Trainer.train``; see the class docstring for the resume error.

        Args:
            resume_from_checkpoint (str or bool, optional): as in ``Trainer.train``.
            *args: further positional arguments of ``Trainer.train``.
            **kwargs: further keyword arguments of ``Trainer.train``.
        """
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        except StateDictMismatchError as error:
            if not resume_from_checkpoint:
                raise
            raise StateDictMismatchError(
                f"resume_from_checkpoint={resume_from_checkpoint!r}: its optimizer state was "
                f"not written by AdaBalance ({error}), so it cannot be resumed with "
                f"optim={self.args.optim!r}. Either resume with the optimizer that wrote it "
                f"(the optim of that run, e.g. --optim adamw_torch), or start AdaBalance from "
                f"those weights with fresh optimizer state: load the model from the checkpoint "
                f"folder (from_pretrained, or --model_name_or_path) and train without "
                f"resume_from_checkpoint."
            ) from error
