"""AdaBalance for Hugging Face Transformers (and TRL, which builds on its Trainer).

``import adabalance_hf`` registers the AdaBalance optimizer names with transformers
(:mod:`.registration`): ``TrainingArguments(optim="adabalance")``, ``--optim adabalancew_8bit``,
every TRL config, the stock ``Trainer``. Other ways in, for an optimizer object:
``Trainer(optimizers=(AdaBalance(trainer_param_groups(model, args.weight_decay),
**adabalance_optimizer_kwargs(args)), None))`` or ``Trainer(optimizer_cls_and_kwargs=(AdaBalance,
adabalance_optimizer_kwargs(args)))``.

Names load on first use, so that the registration hook, which imports this package while
transformers imports ``training_args``, does not import the ``Trainer`` too.
"""

from ..._lazy import lazy_attributes

# public name -> the submodule that defines it.
_LAZY = {
    "AdaBalanceDiagnosticsCallback": ".callback",
    "adabalance_diagnostics": ".callback",
    "add_diagnostics_callback": ".callback",
    "TrainerChecks": ".checks",
    "check_optimizer_holds_trainable_parameters": ".checks",
    "OptimizerOptionError": ".registration",
    "adabalance_optimizer_kwargs": ".registration",
    "get_adabalance": ".registration",
    "register_optimizer_names": ".registration",
    "AdaBalanceTrainer": ".trainer",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
