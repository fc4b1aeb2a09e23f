"""AdaBalance's options, each declared once: :data:`OPTIONS`.

Every option of a param group is one row of the table (name, default, kind and range, one line
of doc, and what reads it), and the rest of the package reads the table instead of spelling the
option out:

* the constructors' ``defaults`` (:func:`group_defaults`), and the check, at import, that their
  explicit signatures have the table's names, order and defaults (:func:`check_signature`);
* the checks of construction, ``add_param_group``, ``load_state_dict`` and ``step``
  (``_validation``, through :meth:`Option.check`), which a step runs only on the options that
  enter the arithmetic;
* the upgrade of a state dict or pickle saved before an option existed
  (:data:`UPGRADE_DEFAULTS`), the keys that make a state dict AdaBalance's
  (:data:`REFERENCE_KEYS`), and those ``load_state_dict`` keeps (:data:`KEPT_ON_LOAD`);
* the step's hyper-parameters, one :class:`Hyper` built per group and step (:func:`hyper_of`),
  which the execution paths and the kernels' scalars take;
* transformers' ``optim_args`` string (:meth:`Option.from_string` of the options marked
  ``optim_args``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from torch import Tensor

from ._kinds import CHECKS, FROM_STRING

__all__ = [
    "KEPT_ON_LOAD",
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "REFERENCE_KEYS",
    "UPGRADE_DEFAULTS",
    "Hyper",
    "Option",
    "as_float",
    "check_signature",
    "group_defaults",
    "hyper_of",
    "option_arguments",
]

Kind = Literal["number", "betas", "flag", "flag or None", "block size"]
Role = Literal["argument", "fixed", "record"]


@dataclass(frozen=True)
class Option:
    """One option of an AdaBalance param group.

    Attributes:
        name (str): the keyword argument and param-group key.
        default (Any): the constructors' default, and the value a group saved before the option
            existed gets.
        kind (str): what it holds, which decides its check and its conversion from a string:
            ``"number"`` (a real number or a one-element tensor in ``[0, high)``), ``"betas"`` (a
            pair of them in ``[0, 1)``), ``"flag"`` (``True`` or ``False``), ``"flag or None"``,
            ``"block size"`` (a positive integer, or None for the class's default).
        doc (str): one line: what it does.
        high (float): the exclusive upper end of a number's range. Default: ``inf``
        step (tuple of str): the :class:`Hyper` fields it becomes (``betas``: ``beta1``,
            ``beta2``); empty for an option that picks a path instead of entering the arithmetic
            (a step does not check those again). Default: ``(name,)``
        role (str): ``"argument"`` (a constructor argument), ``"fixed"`` (in every group but not
            an argument: torch's ``differentiable``) or ``"record"`` (written into each group by
            the optimizer: ``base_lr``). Default: ``"argument"``
        reference (bool): in the reference code's param groups, so in every AdaBalance state
            dict: a saved group without it is another optimizer's. Default: ``False``
        optim_args (bool): settable through transformers' ``optim_args``. Default: ``False``
        kept_on_load (bool): ``load_state_dict`` keeps the loading optimizer's value.
            Default: ``False``
        low_bit (bool): an option of ``AdaBalance8bit`` and ``AdaBalance4bit`` only.
            Default: ``False``
    """

    name: str
    default: Any
    kind: Kind
    doc: str
    high: float = math.inf
    step: tuple[str, ...] | None = None
    role: Role = "argument"
    reference: bool = False
    optim_args: bool = False
    kept_on_load: bool = False
    low_bit: bool = False

    def __post_init__(self) -> None:
        if self.step is None:
            object.__setattr__(self, "step", (self.name,))

    def check(self, value: Any, *, tensors: bool = True) -> None:
        """Raise a ``ValueError`` naming the option, the value and the fix if ``value`` is invalid.

        Args:
            value (Any): the option's value.
            tensors (bool, optional): also check a value held in a tensor (reads it: a device
                synchronisation for an accelerator tensor). Default: ``True``
        """
        CHECKS[self.kind](self.name, value, self.high, tensors)

    def from_string(self, text: str) -> Any:
        """Convert ``text`` (from a ``key=value`` string) to the option's type, or raise a
        ``ValueError`` naming the key, the text and how to write it.

        Args:
            text (str): the value as written, e.g. ``"1e-3"``, ``"true"`` or ``"none"``.
        """
        return FROM_STRING[self.kind](self.name, text)


#: The options of a param group, in the constructors' order (which is also the order of checks:
#: the first invalid option is named).
OPTIONS: tuple[Option, ...] = (
    Option("lr", 1e-3, "number", "learning rate (a float or a 0-dim tensor)", reference=True),
    Option("base_lr", None, "number", "the group's lr when it was created", role="record"),
    Option("betas", (0.9, 0.999), "betas", "decay rates of m and v", step=("beta1", "beta2"),
           reference=True),
    Option("beta3", 0.999, "number", "decay rate of the smoothed step size s", high=1.0,
           reference=True, optim_args=True),
    Option("final_lr", 0.1, "number", "the SGD rate both bounds converge to at lr == base_lr",
           reference=True, optim_args=True),
    Option("gamma", 1e-3, "number", "convergence speed of the bounds; 0 disables them",
           high=1.0, reference=True, optim_args=True),
    Option("eps", 1e-8, "number", "term added to the denominator", reference=True),
    Option("weight_decay", 0, "number", "weight decay coefficient", reference=True),
    Option("amsbound", False, "flag", "use the running maximum of v", optim_args=True),
    Option("block_size", None, "block size", "elements per scale of low-bit state; None: the "
           "class's (128 for AdaBalance8bit, 32 for AdaBalance4bit)", step=(),
           optim_args=True, kept_on_load=True, low_bit=True),
    Option("decoupled_weight_decay", False, "flag", "AdamW-style weight decay", optim_args=True),
    Option("maximize", False, "flag", "maximize the objective", optim_args=True),
    Option("foreach", None, "flag or None", "the torch._foreach_* path", step=(),
           optim_args=True),
    Option("fused", None, "flag or None", "the compiled kernel", step=(), optim_args=True),
    Option("master_weights", True, "flag", "fp32 master copies of bf16/fp16 parameters",
           step=()),
    Option("bf16_stochastic_round", False, "flag", "round bf16 results stochastically",
           step=("stochastic_round",)),
    Option("skip_nonfinite_grads", False, "flag", "skip steps with inf/nan gradients", step=(),
           optim_args=True, kept_on_load=True),
    Option("differentiable", False, "flag", "torch's; AdaBalance's step is not differentiable",
           step=(), role="fixed"),
)  # fmt: skip
OPTIONS_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
#: The keys of every param group of the reference code: a saved group without one is not
#: AdaBalance's.
REFERENCE_KEYS: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.reference)
#: What a group saved before an option existed gets (``__setstate__``); the defaults reproduce
#: the reference code.
UPGRADE_DEFAULTS: dict[str, Any] = {
    o.name: o.default for o in OPTIONS if not (o.reference or o.low_bit or o.role == "record")
}
#: Options ``load_state_dict`` keeps from the loading optimizer, where it has them.
KEPT_ON_LOAD: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.kept_on_load)


class Hyper(NamedTuple):
    """A param group's hyper-parameters as a step takes them: Python floats and bools.

    Built once per group and step (:func:`hyper_of`). The fields are the ``step`` names of
    :data:`OPTIONS` in the table's order (checked at import), and the hyper-parameter keywords of
    :func:`~adabalance_hf.optim.functional.adabalance`.
    """

    lr: float
    base_lr: float
    beta1: float
    beta2: float
    beta3: float
    final_lr: float
    gamma: float
    eps: float
    weight_decay: float
    amsbound: bool
    decoupled_weight_decay: bool
    maximize: bool
    stochastic_round: bool

    @property
    def denominator_eps(self) -> float:
        """``eps`` as the smoothed rate's denominator takes it: 1 at ``lr == 0``, where the
        rate's increment ``(1 - beta3) * lr / denom`` is 0 whatever ``denom`` and ``eps=0`` with
        a zero second moment would make it 0 / 0 = NaN; else ``eps``. The same results
        otherwise, bit for bit (0 divided by any positive number is 0)."""
        return 1.0 if self.lr == 0.0 else self.eps


_STEP_OPTIONS = tuple((o.name, o.kind) for o in OPTIONS if o.step)
if Hyper._fields != tuple(field for o in OPTIONS for field in o.step or ()):
    raise ImportError(f"Hyper's fields {Hyper._fields} are not the step names of OPTIONS")


def as_float(value: float | Tensor) -> float:
    """``value`` as a Python float (a tensor is read: a synchronisation on an accelerator)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def hyper_of(group: Mapping[str, Any]) -> Hyper:
    """The hyper-parameters of a param group as a step takes them (floats, ``betas`` split).

    Args:
        group (Mapping): a param group holding every option of :data:`OPTIONS` that has
            :class:`Hyper` fields (``base_lr`` included).
    """
    values: list[Any] = []
    for name, kind in _STEP_OPTIONS:
        value = group[name]
        if kind == "number":
            values.append(as_float(value))
        elif kind == "betas":
            values.extend(as_float(beta) for beta in value)
        else:
            values.append(value)
    return Hyper._make(values)


def option_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The options among a constructor's arguments (its ``locals()``), in the table's order.

    Args:
        arguments (Mapping): the constructor's local names and values.
    """
    return {o.name: arguments[o.name] for o in OPTIONS if o.name in arguments}


def group_defaults(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """An ``AdaBalance``'s ``defaults``: each option's argument, else the table's default.

    Args:
        arguments (Mapping): the constructor's arguments (its ``locals()``).
    """
    return {
        o.name: arguments[o.name] if o.role == "argument" else o.default
        for o in OPTIONS
        if o.role != "record" and not o.low_bit
    }


def check_signature(init: Callable[..., Any], *, low_bit: bool = False) -> None:
    """Raise an ``ImportError`` unless ``init`` takes ``self``, ``params`` and then exactly the
    table's arguments, in its order, with its defaults (of the same type).

    Args:
        init (Callable): a constructor, e.g. ``AdaBalance.__init__``.
        low_bit (bool, optional): expect the low-bit options too. Default: ``False``
    """
    expected = [
        (o.name, o.default) for o in OPTIONS if o.role == "argument" and (low_bit or not o.low_bit)
    ]
    parameters = list(inspect.signature(init).parameters.values())
    found = [(p.name, p.default) for p in parameters[2:]]
    same = [p.name for p in parameters[:2]] == ["self", "params"] and len(found) == len(expected)
    same = same and all(
        name == want_name and type(default) is type(want) and default == want
        for (name, default), (want_name, want) in zip(found, expected, strict=False)
    )
    if not same:
        raise ImportError(
            f"{init.__qualname__} takes {found} after params, but adabalance_hf.optim.options."
            f"OPTIONS declares {expected}: give the signature the table's names, order and "
            f"defaults (the table is the one source of them)"
        )
