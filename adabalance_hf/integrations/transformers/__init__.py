"""AdaBalance for Hugging Face Transformers: Trainer, training arguments, optimizer names.

Three ways in:

1. An optimizer object: ``Trainer(..., optimizers=(AdaBalance(trainer_param_groups(model,
   args.weight_decay), **adabalance_optimizer_kwargs(args)), None))``.
2. ``Trainer(..., optimizer_cls_and_kwargs=(AdaBalance, adabalance_optimizer_kwargs(args)))``.
3. ``AdaBalanceTrainer(..., args=AdaBalanceTrainingArguments(optim="adabalance", ...))`` or
   ``--optim adabalance`` parsed by ``HfArgumentParser(AdaBalanceTrainingArguments)``.
"""

from .callback import (
    AdaBalanceDiagnosticsCallback,
    adabalance_diagnostics,
    add_diagnostics_callback,
)
from .kwargs import adabalance_optimizer_kwargs, trainer_param_groups
from .optim_args import optim_args_keys, parse_optim_args
from .optim_names import adabalance_optimizer_names, all_optimizer_names
from .trainer import AdaBalanceTrainer
from .training_args import AdaBalanceTrainingArguments

__all__ = [
    "AdaBalanceDiagnosticsCallback",
    "AdaBalanceTrainer",
    "AdaBalanceTrainingArguments",
    "adabalance_diagnostics",
    "adabalance_optimizer_kwargs",
    "adabalance_optimizer_names",
    "add_diagnostics_callback",
    "all_optimizer_names",
    "optim_args_keys",
    "parse_optim_args",
    "trainer_param_groups",
]
