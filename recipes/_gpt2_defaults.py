"""The GPT-2 recipe's defaults: AdaBalance with decoupled weight decay and a short-lag ``beta3``.

Chosen on WikiText-2 with a small GPT-2 trained from a config (``benchmarks/glue_quality.py``,
results in ``benchmarks/results/glue_quality.md``): the paper's ``beta3=0.999`` smooths the step
size over about 1,000 steps, far behind Adam's for runs of a few hundred to a few thousand steps,
and the L2 form of weight decay (the reference's) is worse than the decoupled form AdamW uses.
``beta3=0.99`` with ``adabalancew`` beat AdamW; ``gamma`` (the bounds' speed) mattered little.

A default applies only where the command line (or the JSON config) leaves the setting open:
``--optim`` picks another optimizer, and ``--optim_args "beta3=..."`` or ``--adabalance_beta3``
(likewise ``gamma``) replace the recipe's value.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from adabalance_hf.integrations.transformers import adabalance_optimizer_names, parse_optim_args

__all__ = [
    "GPT2_ADABALANCE_DEFAULTS",
    "GPT2_DEFAULT_OPTIM",
    "apply_adabalance_defaults",
    "default_dests",
    "given_on_command_line",
]

GPT2_DEFAULT_OPTIM = "adabalancew"
# AdaBalance keyword -> its AdaBalanceTrainingArguments field
GPT2_ADABALANCE_DEFAULTS = {"beta3": 0.99, "gamma": 1e-4}
_FIELDS = {key: f"adabalance_{key}" for key in GPT2_ADABALANCE_DEFAULTS}
_UNSET = object()


def given_on_command_line(parser: ArgumentParser, argv: list[str], dests: list[str]) -> set[str]:
    """Return the ``dests`` that ``argv`` sets explicitly.

    Parses ``argv`` once more with a sentinel as every default, so flag spellings argparse accepts
    (``--a_b``, ``--a-b``, ``--a_b=v``) are recognised the way argparse recognises them.

    Args:
        parser (ArgumentParser): the recipe's parser; its defaults are restored afterwards.
        argv (list of str): the command line, without the program name.
        dests (list of str): the argument destinations to look for.
    """
    saved = {dest: parser.get_default(dest) for dest in dests}
    parser.set_defaults(**dict.fromkeys(dests, _UNSET))
    try:
        namespace, _ = parser.parse_known_args(argv)
    finally:
        parser.set_defaults(**saved)
    return {dest for dest in dests if getattr(namespace, dest, _UNSET) is not _UNSET}


def default_dests() -> list[str]:
    """The argument destinations whose recipe defaults :func:`apply_adabalance_defaults` fills."""
    return list(_FIELDS.values())


def apply_adabalance_defaults(training_args: Any, given_fields: set[str]) -> dict[str, float]:
    """Set the recipe's AdaBalance defaults on ``training_args`` where the user left them open.

    Args:
        training_args (AdaBalanceTrainingArguments): parsed arguments, changed in place.
        given_fields (set of str): ``adabalance_*`` fields the user set explicitly (command line
            or JSON config).

    Returns:
        dict: the AdaBalance keywords set from the recipe's defaults (empty for a non-AdaBalance
        ``optim``).
    """
    if training_args.optim not in adabalance_optimizer_names():
        return {}
    in_optim_args = parse_optim_args(training_args.optim_args)
    applied = {}
    for key, value in GPT2_ADABALANCE_DEFAULTS.items():
        if _FIELDS[key] in given_fields or key in in_optim_args:
            continue
        setattr(training_args, _FIELDS[key], value)
        applied[key] = value
    return applied
