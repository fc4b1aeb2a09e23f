"""1-D aliases of the tensors the fused kernel takes, kept by the optimizer from step to step.

The compiled kernel takes every tensor flattened to 1-D, as a tensor on the same memory that is
not a view (dynamo guards a view input on its base's shape, so views of 1-D and 2-D tensors would
each need a graph of their own). Making one costs a view and a detach. Parameters, states and
master copies are the same tensors at every step, so :class:`FlatAliases` keeps the aliases made
at one step for the next: the Python of a BERT-base step went from 4.0 to 3.3 ms, of a step over
Llama-2-7B's 448-tensor LoRA adapter from 5.8 to 4.6 ms (``benchmarks/host_time.py``; on a GPU,
where the kernels are queued and take about a millisecond, that host time is the step time).
"""

from __future__ import annotations

from torch import Tensor

from ._dtensor import local_tensor

__all__ = ["FlatAliases", "flat"]


def flat(tensor: Tensor) -> Tensor:
    """``tensor``'s elements (a DTensor's local shard) as a 1-D tensor on the same memory that is
    not a view."""
    return local_tensor(tensor).view(-1).detach()


class FlatAliases:
    """The 1-D aliases (see :func:`flat`) of one step, reused at the next.

    An alias is reused only for the same tensor object whose memory is still where the alias
    points, so ``param.data = ...`` (``module.to``, FSDP2 resetting a shard) or a state replaced
    by a new tensor makes a new one. The aliases of the last step are all that is kept, and they
    hold nothing the optimizer does not hold itself (gradients are never kept: a model's
    gradients would stay allocated through ``zero_grad(set_to_none=True)``); an optimizer drops
    them when it loads a state dict, so the replaced state is freed at once.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[Tensor, Tensor]] = {}  # id -> (tensor, alias), last step
        self._made: dict[int, tuple[Tensor, Tensor]] = {}  # this step

    def __call__(self, tensor: Tensor) -> Tensor:
        """The alias of ``tensor`` (a parameter, a state or a master copy), reused if valid."""
        key = id(tensor)
        entry = self._last.get(key)
        if entry is None or entry[0] is not tensor or not _covers(entry[1], tensor):
            entry = (tensor, flat(tensor))
        self._made[key] = entry
        return entry[1]

    def end_step(self) -> None:
        """Keep this step's aliases for the next one, and only them."""
        self._last, self._made = self._made, {}


def _covers(alias: Tensor, tensor: Tensor) -> bool:
    """Whether ``alias`` still lies on all of ``tensor``'s memory (a DTensor's local shard's)."""
    local = local_tensor(tensor)
    return alias.data_ptr() == local.data_ptr() and alias.numel() == local.numel()
