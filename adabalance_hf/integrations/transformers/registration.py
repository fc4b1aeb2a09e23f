"""The AdaBalance optimizer names in transformers' own classes: one handler, registered at import.

transformers turns an ``optim`` name into an optimizer with one handler per name,
``_get_X(ctx) -> (cls, kwargs)`` (``trainer_optimizer.py``), after ``OptimizerNames(...)`` has
accepted the name. :func:`register_optimizer_names` puts AdaBalance's names into
``OptimizerNames`` and :func:`get_adabalance` into the handler table, so the stock
``TrainingArguments``, ``Seq2SeqTrainingArguments``, every TRL config, ``HfArgumentParser``
(``--optim adabalance``), YAML/JSON configs and the stock ``Trainer`` take them. ``import
adabalance_hf`` arranges that this module runs when transformers is imported (never before).

What this relies on that transformers does not promise is in :mod:`._private_api`; if it changed,
the names are unavailable and one warning says what still works.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType, SimpleNamespace
from typing import Any

from ...names import (
    OptionError,
    adabalance_cls_and_kwargs,
    adabalance_optimizer_names,
    is_adabalance_name,
)
from ...optim import AdaBalance
from ...run import install_short_errors
from ._private_api import (
    PrivateAPIError,
    add_enum_member,
    optimizer_handlers,
    wrap_get_optimizer_cls_and_kwargs,
)

__all__ = [
    "OptimizerOptionError",
    "adabalance_optimizer_kwargs",
    "get_adabalance",
    "optimizer_cls_and_kwargs",
    "register_optimizer_names",
]

# AdaBalance keyword -> the TrainingArguments field (the command-line flag) that sets it.
_FIELDS = {
    "lr": "learning_rate",
    "betas[0]": "adam_beta1",
    "betas[1]": "adam_beta2",
    "eps": "adam_epsilon",
    "weight_decay": "weight_decay",
}


class OptimizerOptionError(ValueError):
    """An AdaBalance name's option is invalid; the message names the flag, the value and the fix.

    Raised when the training arguments are created, so at argument-parsing time. Uncaught, it
    prints as one ``prog: error: ...`` line, without a traceback unless ``ADABALANCE_HF_DEBUG=1``
    (see :func:`adabalance_hf.run.install_short_errors`).
    """

    adabalance_usage_error = True


def _training_kwargs(args: Any) -> dict[str, Any]:
    return {
        "lr": args.learning_rate,
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
        "weight_decay": args.weight_decay,
    }


def get_adabalance(ctx: Any) -> tuple[type[AdaBalance], dict[str, Any]]:
    """transformers' optimizer handler for the AdaBalance names, shaped like its own ``_get_X``.

    Args:
        ctx (OptimizerContext): transformers' context: ``ctx.args`` are the training arguments,
            ``ctx.optimizer_kwargs`` holds ``lr`` and ``ctx.adam_kwargs`` ``betas`` and ``eps``.

    Returns:
        tuple: ``(AdaBalance or a low-bit subclass, kwargs)``: the name's variant with the
        fine-tuning defaults and the typed ``optim_args`` (see
        :func:`~adabalance_hf.names.adabalance_cls_and_kwargs`). The Trainer adds its decay
        groups (no weight decay on biases and norm weights).
    """
    args = ctx.args
    return adabalance_cls_and_kwargs(
        args.optim,
        **{**ctx.optimizer_kwargs, **ctx.adam_kwargs},
        weight_decay=args.weight_decay,
        optim_args=args.optim_args,
    )


def optimizer_cls_and_kwargs(
    args: Any, model: Any = None
) -> tuple[type[AdaBalance], dict[str, Any]]:
    """Call :func:`get_adabalance` with a context built as transformers builds its own.

    For transformers without a handler table (4.57) and for ``AdaBalanceTrainer``.

    Args:
        args (TrainingArguments): arguments whose ``optim`` is an AdaBalance name.
        model (nn.Module, optional): the model. Default: ``None``
    """
    context = SimpleNamespace(
        args=args,
        model=model,
        optimizer_kwargs={"lr": args.learning_rate},
        adam_kwargs={"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon},
    )
    return get_adabalance(context)


def adabalance_optimizer_kwargs(args: Any, **overrides: Any) -> dict[str, Any]:
    """Build AdaBalance's keyword arguments from training arguments.

    For ``Trainer(optimizer_cls_and_kwargs=(AdaBalance, adabalance_optimizer_kwargs(args)))``
    (stock transformers passes those kwargs unchanged and does not add ``lr``: without this
    helper AdaBalance would silently run at its default ``lr=1e-3``) or to construct an
    AdaBalance object for ``Trainer(optimizers=(optimizer, None))``.

    The result holds ``lr=args.learning_rate``, ``betas=(args.adam_beta1, args.adam_beta2)``,
    ``eps=args.adam_epsilon``, ``weight_decay=args.weight_decay``, the fine-tuning defaults and,
    when ``args.optim`` is an AdaBalance name, that name's variant and the options of
    ``args.optim_args``. With another ``optim``, ``optim_args`` belong to that optimizer and are
    not read: pass AdaBalance's options as ``overrides``.

    Args:
        args (TrainingArguments): the training arguments (any class, TRL's configs included).
        **overrides: AdaBalance keyword arguments that replace the values above, e.g.
            ``final_lr=0.05``.

    Raises:
        ValueError: for an override AdaBalance does not take, or a bad ``optim_args``.
    """
    if is_adabalance_name(args.optim):
        name, optim_args = args.optim, args.optim_args
    else:
        name, optim_args = "adabalance", None
    return adabalance_cls_and_kwargs(
        name, **_training_kwargs(args), optim_args=optim_args, **overrides
    )[1]


def check_optimizer_options(args: Any) -> None:
    """Raise :class:`OptimizerOptionError` if an AdaBalance name's options are invalid.

    Checks what the optimizer's constructor would check, without building one.

    Args:
        args (TrainingArguments): arguments whose ``optim`` is an AdaBalance name.
    """
    name = getattr(args.optim, "value", args.optim)
    try:
        adabalance_cls_and_kwargs(name, **_training_kwargs(args), optim_args=args.optim_args)
    except OptionError as error:
        field = _FIELDS.get(error.key)
        if field is not None:
            where, reason = f"--{field} {getattr(args, field)}", error.reason
        else:  # an optim_args key: name it, unless the reason starts with it
            where = f"--optim_args {args.optim_args!r}"
            keyed = error.key == "optim_args" or error.reason.startswith(error.key)
            reason = error.reason if keyed else f"{error.key} {error.reason}"
        install_short_errors()  # uncaught, it prints as one line, as argparse's errors do
        raise OptimizerOptionError(f"{where} (with --optim {name}): {reason}") from None


def _check_after(method: Any) -> Any:
    """``method``, then :func:`check_optimizer_options` when ``optim`` is an AdaBalance name."""
    if getattr(method, "__adabalance_wrapped__", False):
        return method

    @functools.wraps(method)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        if is_adabalance_name(self.optim):
            check_optimizer_options(self)
        return result

    checked.__adabalance_wrapped__ = True
    return checked


@functools.cache
def _warn_unavailable(version: str, reason: str) -> None:
    warnings.warn(
        f"adabalance_hf: the AdaBalance optimizer names (optim='adabalance', ...) are not "
        f"available with transformers {version}: {reason}. What still works: "
        f"Trainer(optimizer_cls_and_kwargs=(AdaBalance, adabalance_optimizer_kwargs(args))), "
        f"Trainer(optimizers=(AdaBalance(...), None)), and AdaBalanceTrainer (it builds AdaBalance "
        f"for the names itself). Tested transformers: 4.57.6 to 5.25.0.",
        RuntimeWarning,
        stacklevel=2,
    )


def _guarded(register: Any) -> Any:
    @functools.wraps(register)
    def run(module: ModuleType) -> None:
        try:
            register(module)
        except PrivateAPIError as error:
            import transformers

            _warn_unavailable(transformers.__version__, str(error))

    return run


@_guarded
def register_names(training_args: ModuleType) -> None:
    """Add the names to ``OptimizerNames``; check their options in ``__post_init__`` and
    ``set_optimizer``.

    Args:
        training_args (module): ``transformers.training_args``.
    """
    for name in adabalance_optimizer_names():
        add_enum_member(training_args.OptimizerNames, name.upper(), name)
    arguments = training_args.TrainingArguments
    for method in ("__post_init__", "set_optimizer"):
        setattr(arguments, method, _check_after(getattr(arguments, method)))


@_guarded
def register_handler(trainer_optimizer: ModuleType) -> None:
    """Add :func:`get_adabalance` to transformers' handler table (transformers >= 5).

    Args:
        trainer_optimizer (module): ``transformers.trainer_optimizer``.
    """
    handlers = optimizer_handlers(trainer_optimizer)
    for name in adabalance_optimizer_names():
        handlers[name] = get_adabalance


@_guarded
def register_static_handler(trainer: ModuleType) -> None:
    """transformers 4.57: route the names through ``Trainer.get_optimizer_cls_and_kwargs``.

    Args:
        trainer (module): ``transformers.trainer``.
    """
    if hasattr(trainer, "_OPTIMIZER_HANDLERS"):  # transformers >= 5: register_handler did it
        return
    wrap_get_optimizer_cls_and_kwargs(
        trainer.Trainer, lambda args: is_adabalance_name(args.optim), optimizer_cls_and_kwargs
    )


def register_optimizer_names() -> None:
    """Register the names with the transformers that is imported (imports it if needed).

    ``import adabalance_hf`` calls the three steps below when transformers' modules are
    imported; call this to register them at once.
    """
    import transformers.trainer
    import transformers.training_args

    register_names(transformers.training_args)
    try:
        import transformers.trainer_optimizer as trainer_optimizer
    except ImportError:
        trainer_optimizer = None
    if trainer_optimizer is not None:
        register_handler(trainer_optimizer)
    register_static_handler(transformers.trainer)
