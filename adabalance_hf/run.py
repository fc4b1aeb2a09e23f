"""``adabalance-run``: run an unmodified script or command line with the AdaBalance names.

::

    adabalance-run path/to/train.py --optim adabalancew --optim_args "final_lr=0.1" ...
    adabalance-run -m package.module ARGS
    adabalance-run trl sft --optim adabalancew_8bit ...          # a console script by name
    adabalance-run accelerate launch --num_processes 2 train.py --optim adabalance ...
    adabalance-run torchrun --nproc-per-node 2 train.py --optim adabalance ...

(``python -m adabalance_hf.run`` is the same.) The names must reach every Python process the
target starts: ``trl sft`` re-launches its script through ``accelerate launch`` in a child
process, and ``accelerate launch`` and ``torchrun`` start one process per rank. As
``opentelemetry-instrument`` and ``ddtrace-run`` do, the launcher puts a bootstrap folder first
on ``PYTHONPATH`` whose ``sitecustomize`` imports ``adabalance_hf`` at the start of each of them
(and then runs the ``sitecustomize`` it hides, if any), and replaces itself with the target
(``exec``): the target keeps its argv, its process id, its signals and its exit code. The order
with a launcher does not matter: ``accelerate launch -m adabalance_hf.run train.py ...`` and
``torchrun -m adabalance_hf.run train.py ...`` work too.

Not reached: interpreters started with ``-I`` or ``-E`` (they ignore ``PYTHONPATH``) or ``-S``
(no ``site``), and programs that clear the environment of their children.
"""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["BOOTSTRAP_DIR", "DEBUG_ENV", "bootstrap_environment", "install_short_errors", "main"]

#: The folder whose ``sitecustomize`` registers the names in every process started under it.
BOOTSTRAP_DIR = str(Path(__file__).resolve().parent / "_bootstrap")
#: Set to ``1`` for the full traceback of an option error instead of the one-line message.
DEBUG_ENV = "ADABALANCE_HF_DEBUG"

_USAGE = """\
usage: adabalance-run SCRIPT.py [ARGS ...]
       adabalance-run -m MODULE [ARGS ...]
       adabalance-run COMMAND [ARGS ...]   (a console script such as trl, accelerate, torchrun)

Runs the target with the AdaBalance optimizer names (--optim adabalance, adabalancew,
adabalance_8bit, ...) registered with transformers in every Python process it starts.
Set {debug}=1 for full tracebacks of option errors."""


def bootstrap_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``environ`` with the bootstrap folder first on ``PYTHONPATH``.

    Args:
        environ (dict, optional): the environment. Default: ``os.environ``
    """
    env = dict(os.environ if environ is None else environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *paths])
    return env


def _short_errors_hook(
    previous: object,
) -> object:
    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        if getattr(kind, "adabalance_usage_error", False) and os.environ.get(DEBUG_ENV) != "1":
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
            print(f"{prog}: error: {error}", file=sys.stderr)
            print(f"(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
            return
        previous(kind, error, tb)  # type: ignore[operator]

    return hook


def install_short_errors() -> None:
    """Print an AdaBalance option error as one ``prog: error: ...`` line instead of a traceback.

    Other exceptions keep the interpreter's hook; with ``ADABALANCE_HF_DEBUG=1`` option errors
    do too.
    """
    if getattr(sys.excepthook, "__adabalance__", False):
        return
    hook = _short_errors_hook(sys.excepthook)
    hook.__adabalance__ = True  # type: ignore[attr-defined]
    sys.excepthook = hook  # type: ignore[assignment]


def _command(argv: Sequence[str]) -> list[str]:
    """The command line to ``exec``: the interpreter for a script or module, else a program."""
    first, rest = argv[0], list(argv[1:])
    if first == "-m":
        if not rest:
            raise SystemExit(
                f"{_USAGE.format(debug=DEBUG_ENV)}\nadabalance-run: error: -m needs a module"
            )
        return [sys.executable, "-m", *rest]
    if first.endswith(".py") or (os.sep in first and Path(first).is_file()):
        if not Path(first).is_file():
            raise SystemExit(f"adabalance-run: error: no such script: {first}")
        return [sys.executable, first, *rest]
    program = shutil.which(first)
    if program is None:
        raise SystemExit(
            f"adabalance-run: error: {first!r} is not a script (.py), a module (-m NAME) or a "
            f"command on PATH; check the spelling, or install the package that provides it"
        )
    return [program, *rest]


def main(argv: Sequence[str] | None = None) -> None:
    """Replace this process with the target, the names registered in it and its children.

    Args:
        argv (sequence of str, optional): ``SCRIPT.py ARGS``, ``-m MODULE ARGS`` or
            ``COMMAND ARGS``. Default: ``sys.argv[1:]``
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE.format(debug=DEBUG_ENV))
        raise SystemExit(0 if argv else 2)
    command = _command(argv)
    env = bootstrap_environment()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(command[0], command, env)
    except OSError:
        traceback.print_exc()
        raise SystemExit(f"adabalance-run: error: could not start {command[0]}") from None


if __name__ == "__main__":
    main()
