"""adabalance-hf: the AdaBalance optimizer for PyTorch and the Hugging Face stack."""

from .optim import AdaBalance, adabalance

__version__ = "0.1.0"

__all__ = ["AdaBalance", "__version__", "adabalance"]
