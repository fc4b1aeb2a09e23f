"""AdaBalance optimizer: the class and its functional implementation."""

from ._state_dict_checks import StateDictMismatchError
from .adabalance import AdaBalance
from .functional import adabalance

__all__ = ["AdaBalance", "StateDictMismatchError", "adabalance"]
