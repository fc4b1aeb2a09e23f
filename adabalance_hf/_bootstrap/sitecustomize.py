"""Run by Python at start-up in every process that ``adabalance-run`` starts, children included.

``adabalance-run`` puts this folder first on ``PYTHONPATH``; Python's ``site`` module imports the
first ``sitecustomize`` it finds on ``sys.path``, this one, in the process it starts and in
every process that inherits the environment (``accelerate launch``'s and ``torchrun``'s ranks,
TRL's re-launch of its script). It imports ``adabalance_hf`` (cheap: the optimizer names are
registered with transformers when the program imports it), shortens the option errors, then runs
the ``sitecustomize`` it hides, if there is one.
"""

import os
import sys


def _run_hidden_sitecustomize() -> None:
    """Run the ``sitecustomize`` later on ``sys.path`` that this one hides, if there is one."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return  # the usual case: nothing hidden, nothing imported
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


try:
    import adabalance_hf  # noqa: F401  (registers the names when transformers is imported)
    from adabalance_hf.run import install_short_errors

    install_short_errors()
except Exception as error:  # a broken install must not break every Python process
    print(f"adabalance-run: could not load adabalance_hf: {error!r}", file=sys.stderr)

_run_hidden_sitecustomize()
