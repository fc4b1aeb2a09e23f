"""Every transformers name this package uses that transformers does not promise, in one place.

Checked against transformers 4.57.6 (the floor in ``pyproject.toml``) and 5.25.0;
``tests/test_transformers_private_api.py`` checks each in both of CI's environments. When one is
gone, the function that needs it raises :class:`PrivateAPIError` naming it, and ``import
adabalance_hf`` still works: the optimizer names are then unavailable, with one warning (see
``registration.py``).

To register the optimizer names (``registration.py``):

* ``OptimizerNames``' member table (``_member_names_``, ``_member_map_``,
  ``_value2member_map_``: the standard library's ``enum`` internals): :func:`add_enum_member`
  adds a member, so ``OptimizerNames("adabalance")`` (``TrainingArguments.__post_init__``,
  ``set_optimizer``) and ``HfArgumentParser``'s ``--optim`` choices (``list(OptimizerNames)``)
  include it.
* transformers >= 5: ``transformers.trainer_optimizer._OPTIMIZER_HANDLERS``, the dict from an
  ``optim`` name to its handler ``handler(ctx: OptimizerContext) -> (cls, kwargs)`` that
  ``Trainer.get_optimizer_cls_and_kwargs`` looks up.
* transformers 4.57: no such dict; the public static ``Trainer.get_optimizer_cls_and_kwargs``
  (an if-chain) is wrapped so that our names go to our handler first.
* ``TrainingArguments.__post_init__`` and ``TrainingArguments.set_optimizer`` are wrapped
  (public, but patching them is not promised to keep working) so that a bad ``optim_args``
  fails when the arguments are parsed or set.

For crash-safe checkpoints (``adabalance_hf.checkpoint.trainer.AtomicCheckpointsMixin``), the
private ``Trainer`` methods in :data:`PRIVATE_TRAINER_METHODS`:

* ``_save_checkpoint(model, trial)``: writes every file of ``checkpoint-N`` below
  ``self._get_output_dir(trial)``, sets ``state.best_model_checkpoint``, pushes with
  ``self._push_from_checkpoint(path)`` and rotates the checkpoints of the run dir.
* ``_get_output_dir(trial)``: the run dir of a (hyper-parameter search) trial; overridden while
  a save runs, to send the whole save into a staging folder.
* ``_push_from_checkpoint(checkpoint_folder)``: deferred until the checkpoint has its name.
* ``transformers.trainer.TRAINER_STATE_NAME``: the file ``_save_checkpoint`` writes last.

And ``Trainer.get_decay_parameter_names(self, model)``, called unbound with ``self=None``
(``adabalance_hf.decay_groups``: it reads nothing from the instance).
"""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = [
    "CHECKED_VERSIONS",
    "PRIVATE_TRAINER_METHODS",
    "PrivateAPIError",
    "add_enum_member",
    "optimizer_handlers",
    "wrap_get_optimizer_cls_and_kwargs",
]

CHECKED_VERSIONS = ("4.57.6", "5.25.0")

#: private ``Trainer`` method -> the parameters (after ``self``) this package passes.
PRIVATE_TRAINER_METHODS: dict[str, tuple[str, ...]] = {
    "_save_checkpoint": ("model", "trial"),
    "_get_output_dir": ("trial",),
    "_push_from_checkpoint": ("checkpoint_folder",),
    "get_decay_parameter_names": ("model",),
}

_ENUM_TABLES = {"_member_names_": list, "_member_map_": dict, "_value2member_map_": dict}


class PrivateAPIError(RuntimeError):
    """A transformers internal this package relies on is not as it was: the message names it."""


def optimizer_handlers(module: ModuleType) -> dict[Any, Any]:
    """Return ``transformers.trainer_optimizer._OPTIMIZER_HANDLERS`` (transformers >= 5).

    Args:
        module (module): ``transformers.trainer_optimizer``.

    Raises:
        PrivateAPIError: if the module has no such dict.
    """
    handlers = getattr(module, "_OPTIMIZER_HANDLERS", None)
    if not isinstance(handlers, dict):
        raise PrivateAPIError(f"{module.__name__}._OPTIMIZER_HANDLERS is not a dict")
    return handlers


def wrap_get_optimizer_cls_and_kwargs(
    trainer_cls: type, handles: Callable[[Any], bool], handler: Callable[[Any, Any], Any]
) -> None:
    """Make the static ``trainer_cls.get_optimizer_cls_and_kwargs`` try ``handler`` first.

    For transformers 4.57, which has no handler dict: for arguments where ``handles(args)``,
    the method returns ``handler(args, model)``.

    Raises:
        PrivateAPIError: if the method is not a static method taking ``(args, model)``.
    """
    original = inspect.getattr_static(trainer_cls, "get_optimizer_cls_and_kwargs", None)
    if not isinstance(original, staticmethod):
        raise PrivateAPIError(f"{trainer_cls.__name__}.get_optimizer_cls_and_kwargs is not static")
    if getattr(original.__func__, "__adabalance_wrapped__", False):
        return
    if list(inspect.signature(original.__func__).parameters)[:2] != ["args", "model"]:
        raise PrivateAPIError(
            f"{trainer_cls.__name__}.get_optimizer_cls_and_kwargs does not take (args, model)"
        )

    @functools.wraps(original.__func__)
    def get_optimizer_cls_and_kwargs(args: Any, model: Any = None) -> tuple[Any, Any]:
        if not handles(args):
            return original.__func__(args, model)
        return handler(args, model)

    get_optimizer_cls_and_kwargs.__adabalance_wrapped__ = True
    trainer_cls.get_optimizer_cls_and_kwargs = staticmethod(get_optimizer_cls_and_kwargs)


def add_enum_member(enum_cls: type[enum.Enum], name: str, value: str) -> enum.Enum:
    """Add the member ``name = value`` to a ``str``-valued enum, as if its class body had it.

    Lookup by value (``enum_cls(value)``), by name (``enum_cls[name]``, ``enum_cls.NAME``),
    iteration and ``len`` see it. Adding a value that is already a member returns that member.

    Args:
        enum_cls (type): the enum class, a subclass of ``str`` and ``Enum``.
        name (str): the member's name, e.g. ``"ADABALANCE"``.
        value (str): its value, e.g. ``"adabalance"``.

    Returns:
        The member.

    Raises:
        PrivateAPIError: if the enum's member tables are not the standard library's.
    """
    for table, kind in _ENUM_TABLES.items():
        if not isinstance(vars(enum_cls).get(table), kind):
            raise PrivateAPIError(f"{enum_cls.__name__}.{table} is not a {kind.__name__}")
    if not issubclass(enum_cls, str):
        raise PrivateAPIError(f"{enum_cls.__name__} is not a str enum")
    existing = enum_cls._value2member_map_.get(value)
    if existing is not None:
        return existing
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    if hasattr(next(iter(enum_cls)), "_sort_order_"):  # Python >= 3.12
        member._sort_order_ = len(enum_cls._member_names_)
    setattr(enum_cls, name, member)  # before the member map, which makes the name read-only
    enum_cls._member_names_.append(name)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    return member
