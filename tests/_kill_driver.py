"""Run a script and SIGKILL (or signal) it at a chosen call of a chosen function (test faults).

Usage::

    python tests/_kill_driver.py MODULE:QUALNAME:N[:WHEN] SCRIPT [ARGS...]

``MODULE:QUALNAME`` names a function or method (e.g.
``adabalance_hf.optim.adabalance:AdaBalance.step`` or
``adabalance_hf.checkpoint.atomic:write_manifest``); on its ``N``-th call (1-based) the process
kills itself with SIGKILL, before the call runs, or right after it returns with ``:after``.
SIGKILL cannot be caught, so no ``finally`` block, atexit hook or signal handler of the script
runs: this is what a preempted machine or the OOM killer does. The script runs as ``__main__``
with ``sys.argv`` set as if it had been started directly. Several specs can be given, separated
by ``,`` (the first to fire kills).

For a function that writes the file named by its second positional argument (``torch.save(obj,
path)``, ``safetensors.torch.save_file(tensors, path)``, accelerate's ``save(obj, path)``),
``:half`` runs the call, cuts the file to half its size and then kills (a kill in the middle of
a write), and ``:enospc`` runs it, cuts the file to half and raises
``OSError(ENOSPC, "No space left on device")`` instead of killing (a disk that fills during a
save; the script goes on handling the error). ``:sigint`` and ``:sigterm`` send that signal to
the process right after the call returns (a Ctrl-C, a preemption notice) and let it go on.

A function is patched where it is looked up: to reach a name that a module imports with ``from
X import f``, name that module. The same faults work inside a test process through
:func:`install` (with pytest's ``monkeypatch``, which undoes them).

``KILL_DRIVER_HIDE`` (an environment variable: module names, comma-separated) makes those
modules unimportable in the script, as if they were not installed (e.g. ``matplotlib``).
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import runpy
import signal
import sys


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _cut_to_half(path) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


SIGNALS = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}


def install(spec: str, patch=setattr) -> None:
    """Install the fault ``MODULE:QUALNAME:N[:WHEN]`` (``patch``: e.g. ``monkeypatch.setattr``)."""
    module_name, qualname, count, *when = spec.split(":")
    when = when[0] if when else "before"
    if when not in ("before", "after", "half", "enospc", *SIGNALS):
        raise ValueError(f"{spec}: expected :after, :half, :enospc, :sigint or :sigterm")
    owner = importlib.import_module(module_name)
    *parents, name = qualname.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        fire = calls == int(count)
        if fire and when == "before":
            _kill()
        result = original(*args, **kwargs)
        if fire and when in SIGNALS:
            os.kill(os.getpid(), SIGNALS[when])
            return result
        if fire and when in ("half", "enospc"):
            _cut_to_half(args[1])
            if when == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[1]))
        if fire and when != "enospc":
            _kill()
        return result

    patch(owner, name, wrapper)


def main() -> None:
    specs, script, *args = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    for name in filter(None, os.environ.get("KILL_DRIVER_HIDE", "").split(",")):
        sys.modules[name] = None  # `import name` raises ImportError
    for spec in filter(None, specs.split(",")):
        install(spec)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
