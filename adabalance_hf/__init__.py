"""adabalance-hf: the AdaBalance optimizer for PyTorch and the Hugging Face stack."""

from .optim import AdaBalance, AdaBalance8bit, adabalance

__version__ = "0.1.0"

__all__ = ["AdaBalance", "AdaBalance8bit", "__version__", "adabalance"]

# The transformers integration, imported on first use so that `import adabalance_hf` does not
# import transformers.
_TRANSFORMERS_NAMES = {
    "AdaBalanceArgumentsMixin",
    "AdaBalanceDiagnosticsCallback",
    "AdaBalanceTrainer",
    "AdaBalanceTrainerMixin",
    "AdaBalanceTrainingArguments",
    "AtomicCheckpointsMixin",
    "adabalance_optimizer_kwargs",
    "trainer_param_groups",
}


# The distributed factory, imported on first use (it imports transformers when called).
_DISTRIBUTED_NAMES = {"create_optimizer"}


def __getattr__(name: str):
    if name in _DISTRIBUTED_NAMES:
        from . import distributed as _distributed

        return getattr(_distributed, name)
    if name in _TRANSFORMERS_NAMES:
        from .integrations import transformers as _integration

        return getattr(_integration, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
