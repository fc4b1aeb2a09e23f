"""Mixins whose methods and dataclass defaults do not depend on the order of the bases.

``class C(OurMixin, SFTTrainer)`` and ``class C(SFTTrainer, OurMixin)`` should behave the same.
Plain Python does not give that: in the second order ``Trainer``'s own ``__init__`` or
``_save_checkpoint`` comes first in the MRO and never calls ``super()``, so the mixin's is never
reached; and ``@dataclass`` takes each field's default from the *last* base in reverse MRO order
that lists the field, so a ``TrainingArguments`` subclass placed first resets the defaults of a
subclass placed after it (``SFTConfig``'s ``learning_rate=2e-5`` back to ``5e-5``) although
attribute lookup would find ``SFTConfig``'s.

:class:`OrderFreeMixin` fixes both when a class that mixes one in is created:

* each method named in a mixin's ``_order_free`` table is made to run wherever the mixin sits:
  if what ``super()`` reaches from the new class is not the mixin's version, the new class gets a
  forwarder that runs the mixin's implementation around the next method in its MRO (or around
  the class's own override, when it defines one);
* each dataclass field is re-declared in the new class from the first class in its MRO that
  declares the field itself, so dataclass defaults follow the MRO as attributes do.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["OrderFreeMixin", "declare_field"]

# The implementations an order-free method runs, outermost first, stored on the function.
_IMPLS = "__adabalance_impls__"


def _func(value: Any) -> Any:
    return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value


def _reached(cls: type, name: str, impl: Callable[..., Any]) -> bool:
    """Whether calling ``name`` on ``cls`` runs ``impl`` (through the forwarders on its MRO).

    A forwarder calls on to the next class in the MRO, and so is assumed to do the class's own
    override (as overrides do, through ``super()``); a method of a base class that is neither is
    assumed not to (transformers' ``Trainer`` and ``TrainingArguments`` methods do not call
    ``super()``).
    """
    for base in cls.__mro__:
        if name not in vars(base):
            continue
        impls = getattr(_func(vars(base)[name]), _IMPLS, None)
        if impls is None:
            if base is cls:
                continue
            return False
        if impl in impls:
            return True
    return False


def _forwarder(
    cls: type, name: str, impls: list[Callable[..., Any]], own: Any, static: bool
) -> Any:
    """A method for ``cls`` that runs ``impls`` around ``own`` (or the next ``name`` after it)."""

    def chain(bound: tuple[Any, ...], parent: Callable[..., Any]) -> Callable[..., Any]:
        for impl in reversed(impls):
            parent = functools.partial(impl, *bound, parent)
        return parent

    if static:
        # A classmethod, so that the class it is called on (the instance's, through
        # ``self.name(...)``) gives the MRO to continue in; callers still call it like the
        # static method it replaces.
        def class_method(klass: type, *args: Any, **kwargs: Any) -> Any:
            parent = _func(own) if own is not None else getattr(super(cls, klass), name)
            return chain((), parent)(*args, **kwargs)

        setattr(class_method, _IMPLS, tuple(impls))
        class_method.__name__ = class_method.__qualname__ = name
        class_method.__doc__ = impls[0].__doc__
        return classmethod(class_method)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        parent = own.__get__(self, cls) if own is not None else getattr(super(cls, self), name)
        return chain((self,), parent)(*args, **kwargs)

    setattr(method, _IMPLS, tuple(impls))
    method.__name__ = method.__qualname__ = name
    method.__doc__ = impls[0].__doc__
    return method


def _copy_field(source: dataclasses.Field) -> dataclasses.Field:
    # dataclass() writes the field's name and kind into the Field it processes: give it a new one.
    return dataclasses.field(
        default=source.default,
        default_factory=source.default_factory,
        init=source.init,
        repr=source.repr,
        hash=source.hash,
        compare=source.compare,
        metadata=source.metadata,
        kw_only=source.kw_only,
    )


def declare_field(cls: type, name: str, field_type: Any, field: dataclasses.Field) -> None:
    """Add a field to ``cls``'s own namespace before ``@dataclass`` processes it.

    Called from ``__init_subclass__``, which runs when the class statement ends and before the
    decorator: the class's own annotations dict is the one ``@dataclass`` reads (a copy from
    ``inspect.get_annotations`` would not do).
    """
    if "__annotations__" not in vars(cls):
        cls.__annotations__ = {}
    vars(cls)["__annotations__"][name] = field_type
    setattr(cls, name, field)


def _redeclare_fields_by_mro(cls: type) -> None:
    """Give ``cls`` each inherited dataclass field as the first class of its MRO declares it.

    Only fields where that declaration differs from the one ``@dataclass`` would take are
    re-declared, so the class keeps every other field object (and its order) untouched.
    """
    own_annotations = inspect.get_annotations(cls)
    bases = cls.__mro__[1:]
    names: dict[str, None] = {}
    for base in reversed(bases):
        names.update(dict.fromkeys(getattr(base, "__dataclass_fields__", {})))
    for name in names:
        if name in own_annotations:
            continue  # the class body declares it: that declaration wins anyway
        taken = next(
            base.__dataclass_fields__[name]
            for base in bases
            if name in getattr(base, "__dataclass_fields__", {})
        )
        owner = next(
            (
                base
                for base in bases
                if name in inspect.get_annotations(base)
                and name in getattr(base, "__dataclass_fields__", {})
            ),
            None,
        )
        if owner is None or owner.__dataclass_fields__[name] is taken:
            continue
        try:
            field_type = typing.get_type_hints(owner)[name]
        except Exception:  # an annotation that only its own module can resolve
            field_type = inspect.get_annotations(owner)[name]
        declare_field(cls, name, field_type, _copy_field(owner.__dataclass_fields__[name]))


class OrderFreeMixin:
    """Base of this package's Trainer and TrainingArguments mixins (see the module docstring).

    A mixin lists the methods it adds in ``_order_free``: name -> implementation. A method's
    implementation takes ``(self, parent, *args, **kwargs)``, where ``parent`` is the method it
    wraps, already bound; a static method's is given as ``staticmethod(impl)`` and takes
    ``(parent, *args, **kwargs)`` (it becomes a classmethod, called as the static one was). A
    class's own override of such a method should call ``super()`` as usual: when the mixin comes
    after a class that would hide it, the override itself is wrapped.
    """

    _order_free: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        wanted: dict[str, list[Any]] = {}
        for base in cls.__mro__:  # the first mixin in the MRO wraps outermost
            for name, entry in vars(base).get("_order_free", {}).items():
                wanted.setdefault(name, []).append(entry)
        for name, entries in wanted.items():
            static = isinstance(entries[0], staticmethod)
            impls = [_func(entry) for entry in entries if not _reached(cls, name, _func(entry))]
            if impls:
                setattr(cls, name, _forwarder(cls, name, impls, cls.__dict__.get(name), static))
        if any(dataclasses.is_dataclass(base) for base in cls.__mro__[1:]):
            _redeclare_fields_by_mro(cls)
