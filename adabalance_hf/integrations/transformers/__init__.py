"""AdaBalance for Hugging Face Transformers: Trainer, training arguments, optimizer names.

Three ways in:

1. An optimizer object: ``Trainer(..., optimizers=(AdaBalance(trainer_param_groups(model,
   args.weight_decay), **adabalance_optimizer_kwargs(args)), None))``.
2. ``Trainer(..., optimizer_cls_and_kwargs=(AdaBalance, adabalance_optimizer_kwargs(args)))``.
3. The names: ``AdaBalanceTrainer(..., args=AdaBalanceTrainingArguments(optim="adabalance",
   ...))``, or ``--optim adabalance`` parsed by ``HfArgumentParser(AdaBalanceTrainingArguments)``;
   any other Trainer and arguments class gets them from :class:`AdaBalanceTrainerMixin` and
   :class:`AdaBalanceArgumentsMixin` (TRL's: :mod:`adabalance_hf.integrations.trl`).

Crash-safe checkpoints for any Trainer: :class:`AtomicCheckpointsMixin`.
"""

from .atomic_checkpoints import AtomicCheckpointsMixin
from .callback import (
    AdaBalanceDiagnosticsCallback,
    adabalance_diagnostics,
    add_diagnostics_callback,
)
from .kwargs import adabalance_optimizer_kwargs, trainer_param_groups
from .optim_args import optim_args_keys, parse_optim_args
from .optim_names import (
    FINE_TUNING_DEFAULTS,
    PAPER_OPTIM_ARGS,
    adabalance_optimizer_names,
    all_optimizer_names,
    optimizer_class,
)
from .optimizer_coverage import TrainableParametersCheck, check_optimizer_holds_trainable_parameters
from .trainer import AdaBalanceTrainer, AdaBalanceTrainerMixin
from .training_args import AdaBalanceArgumentsMixin, AdaBalanceTrainingArguments

__all__ = [
    "FINE_TUNING_DEFAULTS",
    "PAPER_OPTIM_ARGS",
    "AdaBalanceArgumentsMixin",
    "AdaBalanceDiagnosticsCallback",
    "AdaBalanceTrainer",
    "AdaBalanceTrainerMixin",
    "AdaBalanceTrainingArguments",
    "AtomicCheckpointsMixin",
    "TrainableParametersCheck",
    "adabalance_diagnostics",
    "adabalance_optimizer_kwargs",
    "adabalance_optimizer_names",
    "add_diagnostics_callback",
    "all_optimizer_names",
    "check_optimizer_holds_trainable_parameters",
    "optim_args_keys",
    "optimizer_class",
    "parse_optim_args",
    "trainer_param_groups",
]
