"""Run a script and SIGKILL it at a chosen call of a chosen function (fault injection for tests).

Usage::

    python tests/_kill_driver.py MODULE:QUALNAME:N[:after] SCRIPT [ARGS...]

``MODULE:QUALNAME`` names a function or method (e.g.
``adabalance_hf.optim.adabalance:AdaBalance.step`` or
``adabalance_hf.checkpoint.atomic:write_manifest``); on its ``N``-th call (1-based) the process
kills itself with SIGKILL, before the call runs, or right after it returns with ``:after``.
SIGKILL cannot be caught, so no ``finally`` block, atexit hook or signal handler of the script
runs: this is what a preempted machine or the OOM killer does. The script runs as ``__main__``
with ``sys.argv`` set as if it had been started directly. Several specs can be given, separated
by ``,`` (the first to fire kills).
"""

from __future__ import annotations

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


def _install(spec: str) -> None:
    module_name, qualname, count, *when = spec.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = qualname.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    after = when == ["after"]
    calls = 0

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == int(count) and not after:
            _kill()
        result = original(*args, **kwargs)
        if calls == int(count) and after:
            _kill()
        return result

    setattr(owner, name, wrapper)


def main() -> None:
    specs, script, *args = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    for spec in specs.split(","):
        _install(spec)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
