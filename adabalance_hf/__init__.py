"""adabalance-hf: the AdaBalance optimizer for PyTorch and the Hugging Face stack.

``import adabalance_hf`` is cheap: it imports neither torch nor transformers. Its names load on
first use, and it registers the AdaBalance optimizer names (``optim="adabalance"``,
``--optim adabalance``) with transformers when, and if, the program imports transformers.
"""

import importlib

from ._import_hooks import when_imported
from ._lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> the module that defines it, imported on first use.
_LAZY = {
    "AdaBalance": ".optim",
    "AdaBalance4bit": ".optim",
    "AdaBalance8bit": ".optim",
    "adabalance": ".optim",
    "FINE_TUNING_DEFAULTS": ".names",
    "PAPER_OPTIM_ARGS": ".names",
    "adabalance_cls_and_kwargs": ".names",
    "adabalance_optimizer_names": ".names",
    "param_groups": ".decay_groups",
    "trainer_param_groups": ".decay_groups",
    "create_optimizer": ".distributed",
    "AdaBalanceDiagnosticsCallback": ".integrations.transformers",
    "AdaBalanceTrainer": ".integrations.transformers",
    "TrainerChecks": ".integrations.transformers",
    "adabalance_optimizer_kwargs": ".integrations.transformers",
    "register_optimizer_names": ".integrations.transformers",
    "AtomicCheckpointsMixin": ".checkpoint",
}

__all__ = ["__version__", *_LAZY]


_lazy_getattr, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return _lazy_getattr(name)
    try:  # a submodule: adabalance_hf.optim, adabalance_hf.checkpoint, ...
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _registration(step: str):
    def hook(module):
        from .integrations.transformers import registration

        getattr(registration, step)(module)

    return hook


when_imported("transformers.training_args", _registration("register_names"))
when_imported("transformers.trainer_optimizer", _registration("register_handler"))
when_imported("transformers.trainer", _registration("register_static_handler"))
