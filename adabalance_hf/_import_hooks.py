"""Run a function right after a module is imported, without importing it (post-import hooks).

``import adabalance_hf`` must give transformers the AdaBalance optimizer names without importing
transformers itself: the names are added when, and if, the program imports transformers. This is
the post-import hook of PEP 369 (withdrawn) as ``wrapt`` and the APM tools build it: a finder at
the front of ``sys.meta_path`` finds the module's spec with the other finders, and wraps its
loader so that, once the module has executed, the hook runs with it. Standard library only.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["when_imported"]

Hook = Callable[[ModuleType], None]

_lock = threading.RLock()
_pending: dict[str, list[Hook]] = {}


class _HookedLoader(importlib.abc.Loader):
    """The module's own loader, then the hooks; the module keeps its own loader afterwards."""

    def __init__(self, loader: Any, hooks: list[Hook]) -> None:
        self.loader = loader
        self.hooks = hooks

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None and module.__spec__.loader is self:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        for hook in self.hooks:
            hook(module)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        with _lock:
            hooks = _pending.pop(fullname, None)
        if hooks is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # a namespace package: nothing executes, nothing to hook
        spec.loader = _HookedLoader(spec.loader, hooks)
        return spec


_finder = _PostImportFinder()


def when_imported(name: str, hook: Hook) -> None:
    """Call ``hook(module)`` once ``name`` is imported: now if it already is, else right after.

    Args:
        name (str): the module's full name, e.g. ``"transformers.training_args"``.
        hook (callable): called with the module object, once.
    """
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
        return
    with _lock:
        _pending.setdefault(name, []).append(hook)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
