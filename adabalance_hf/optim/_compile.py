"""A kernel's first ``torch.compile`` call: said before it starts, timed, its failure explained.

The first step of ``AdaBalance(fused=True)`` and of ``AdaBalance8bit`` compiles a kernel, which
takes seconds (measured on 2 CPU cores: 17 s for the 8-bit kernel with an empty cache, 4 s in a
later process, which finds the compiled code in inductor's on-disk cache). Without a word the
program looks hung, so the first compile of a process is announced on the ``adabalance_hf``
logger at WARNING level, with how long it took; later variants (another dtype) at INFO.
"""

from __future__ import annotations

import logging
import time
import types
import warnings
from collections.abc import Callable, Hashable

import torch
from torch.fx.experimental import _config as _fx_config

__all__ = ["DISTINCT_SIZES", "compile_variant", "run_compiled"]

# Every tensor size of a kernel's inputs gets a symbol of its own. By default ("duck shaping")
# sizes equal at the first call share a symbol and a guard, so a call whose tensors happened to
# be equal in size would recompile for each new pattern of equal sizes, up to the cache limit.
# Tensors that meet in one elementwise operation still share one size: the operation guards it.
DISTINCT_SIZES = {"use_duck_shape": False}

logger = logging.getLogger("adabalance_hf")

_compiled: set[Hashable] = set()


def _cache_dir() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:  # pragma: no cover - another torch layout
        return "torch.compile's cache"
    return cache_dir()


def compile_variant(
    kernel: Callable[..., None],
    name: str,
    options: dict[str, object],
    size_settings: dict[str, object],
) -> Callable[..., None]:
    """``torch.compile(kernel)`` (full graph, dynamic sizes) under a code object of its own.

    Each variant of a kernel gets a copy with a code object named ``name``, because dynamo keeps
    one cache, with a limit of 8 entries, per code object: variants sharing one would evict each
    other and, with ``fullgraph=True``, fail once the limit is hit.

    Args:
        kernel (callable): the kernel (a closure keeps its cells).
        name (str): the copy's name, unique per variant.
        options (dict): inductor's options.
        size_settings (dict): how dynamo treats sizes (``torch.fx.experimental._config``'s
            settings; those this torch lacks are left out), set around every call, since any
            call may compile. Set and restored directly: ``_config.patch`` cost 22 us a call,
            a fifth of a call's cost (2 CPU threads).
    """
    code = kernel.__code__.replace(co_name=name)
    unique = types.FunctionType(
        code, kernel.__globals__, name, kernel.__defaults__, kernel.__closure__
    )
    compiled = torch.compile(unique, fullgraph=True, dynamic=True, options=options)
    settings = {key: value for key, value in size_settings.items() if hasattr(_fx_config, key)}

    def run(*args: object) -> None:
        saved = {key: getattr(_fx_config, key) for key in settings}
        for key, value in settings.items():
            setattr(_fx_config, key, value)
        try:
            compiled(*args)
        finally:
            for key, value in saved.items():
                setattr(_fx_config, key, value)

    return run


def run_compiled(
    variant: Hashable,
    kernel: Callable[[], Callable[..., None]],
    args: tuple,
    *,
    what: str,
    failure: str,
) -> None:
    """Run ``kernel()(*args)``; on a variant's first call, say so, time it and explain failures.

    Args:
        variant (hashable): the kernel's variant (dtypes, device, flags): compiled once each.
        kernel (callable): returns the compiled kernel (``torch.compile`` is lazy: the first
            call compiles).
        args (tuple): the kernel's positional arguments.
        what (str): the kernel, for the log, e.g. ``"AdaBalance8bit's step for torch.float32
            parameters on cpu"``.
        failure (str): the start of the error raised if compiling or running fails: what failed
            and the fix; ``torch.compile``'s own error follows it.

    Raises:
        RuntimeError: ``failure`` and what ``torch.compile`` said.
    """
    if variant in _compiled:
        kernel()(*args)
        return
    first = not _compiled
    level = logging.WARNING if first else logging.INFO
    logger.log(
        level,
        "adabalance_hf: compiling %s with torch.compile; the first step waits for it (seconds, "
        "once per process)",
        what,
    )
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # The first compile imports torch modules that raise DeprecationWarnings about
            # torch.jit; they concern torch itself, not the caller.
            warnings.simplefilter("ignore", DeprecationWarning)
            kernel()(*args)
    except Exception as error:
        raise RuntimeError(
            f"{failure} torch.compile said: {type(error).__name__}: {error}"
        ) from error
    _compiled.add(variant)
    logger.log(
        level,
        "adabalance_hf: compiled in %.1f s; later processes start warm from the cache in %s",
        time.perf_counter() - started,
        _cache_dir(),
    )
