"""AdaBalance optimizer: the class and its functional implementation."""

from .adabalance import AdaBalance
from .functional import adabalance

__all__ = ["AdaBalance", "adabalance"]
