"""Typed parsing of transformers' ``optim_args`` string for AdaBalance.

transformers hands ``optim_args`` (``"key=value,key=value"``) to its optimizers as strings. This
module converts each value to the type AdaBalance expects (the keys and their conversions are
those of ``adabalance_hf.optim.options.OPTIONS``) and rejects unknown keys and malformed
values with an error that names the key, the value and the fix.
"""

from __future__ import annotations

import inspect
from typing import Any

from .optim import AdaBalance, AdaBalance8bit
from .optim.options import OPTIONS, OPTIONS_BY_NAME

__all__ = ["optim_args_keys", "parse_optim_args"]

# Hyper-parameters that have their own TrainingArguments field: setting them twice is an error.
_OWN_FIELDS = {
    "lr": "learning_rate",
    "betas": "adam_beta1 and adam_beta2",
    "beta1": "adam_beta1",
    "beta2": "adam_beta2",
    "eps": "adam_epsilon",
    "weight_decay": "weight_decay",
}


def optim_args_keys(optimizer_cls: type = AdaBalance) -> tuple[str, ...]:
    """Return the keys ``optim_args`` accepts for AdaBalance.

    Args:
        optimizer_cls (type, optional): the optimizer class whose constructor decides which
            keys exist. Default: :class:`~adabalance_hf.AdaBalance`
    """
    accepted = set(inspect.signature(optimizer_cls).parameters)
    return tuple(o.name for o in OPTIONS if o.optim_args and o.name in accepted)


def parse_optim_args(text: str | None, optimizer_cls: type = AdaBalance) -> dict[str, Any]:
    """Parse an ``optim_args`` string into typed AdaBalance keyword arguments.

    Args:
        text (str, optional): comma-separated ``key=value`` pairs, e.g.
            ``"final_lr=0.05,gamma=1e-3,amsbound=true"``. Whitespace is ignored; ``None`` or an
            empty string gives ``{}``.
        optimizer_cls (type, optional): the optimizer class whose constructor decides which
            keys exist. Default: :class:`~adabalance_hf.AdaBalance`

    Returns:
        dict: keyword arguments with floats and bools (``foreach``/``fused`` may be ``None``).

    Raises:
        ValueError: for ``text`` that is not a string (a dict from a JSON config), an item that
            is not ``key=value``, a repeated key, an unknown key (the message lists the valid
            keys), a key that has its own TrainingArguments field, or a value of the wrong type
            (the message names the key and the expected type).

    Example:
        >>> parse_optim_args("final_lr=0.05, amsbound=true")
        {'final_lr': 0.05, 'amsbound': True}
    """
    if not text:
        return {}
    if not isinstance(text, str):
        example = (
            ",".join(f"{key}={value}" for key, value in text.items())
            if isinstance(text, dict)
            else "final_lr=0.05,amsbound=true"
        )
        raise ValueError(
            f"optim_args must be a string of comma-separated key=value pairs, got a "
            f"{type(text).__name__} ({text!r}); write it as optim_args={example!r} (in a JSON "
            f"or YAML config too: transformers' optim_args is a string)"
        )
    valid_keys = optim_args_keys(optimizer_cls)
    parsed: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value or "=" in value:
            raise ValueError(
                f"optim_args: {item!r} is not a key=value pair; write comma-separated pairs "
                f"such as 'final_lr=0.05,amsbound=true'"
            )
        if key in _OWN_FIELDS:
            raise ValueError(
                f"optim_args: {key!r} is set through the TrainingArguments field "
                f"{_OWN_FIELDS[key]}, not through optim_args; remove {key}={value} from optim_args"
            )
        if key not in valid_keys:
            only_8bit = key in optim_args_keys(AdaBalance8bit)
            hint = " (it belongs to the *_8bit and *_4bit names, e.g. optim=adabalance_8bit)"
            hint *= only_8bit
            raise ValueError(
                f"optim_args: unknown key {key!r} for {optimizer_cls.__name__}{hint}; valid "
                f"keys: {', '.join(valid_keys)}"
            )
        if key in parsed:
            raise ValueError(f"optim_args: key {key!r} is given more than once in {text!r}")
        try:
            parsed[key] = OPTIONS_BY_NAME[key].from_string(value)
        except ValueError as error:
            raise ValueError(f"optim_args: {error}") from None
    return parsed
