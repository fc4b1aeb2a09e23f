"""AdaBalance optimizer: the class and its functional implementation."""

from ._blockwise_state import decoded_state
from ._state_dict_checks import StateDictMismatchError
from .adabalance import AdaBalance
from .adabalance_4bit import AdaBalance4bit
from .adabalance_8bit import AdaBalance8bit
from .functional import adabalance

__all__ = [
    "AdaBalance",
    "AdaBalance4bit",
    "AdaBalance8bit",
    "StateDictMismatchError",
    "adabalance",
    "decoded_state",
]
