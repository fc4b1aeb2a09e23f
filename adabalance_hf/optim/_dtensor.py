"""DTensor shards (FSDP2's parameters and state): AdaBalance is elementwise, so each rank steps
the local shard of every tensor like a plain tensor."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["global_offset", "local_tensor"]


def local_tensor(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor; any other tensor as it is."""
    to_local = getattr(tensor, "to_local", None) if type(tensor) is not Tensor else None
    return to_local() if to_local is not None else tensor


def global_offset(param: Tensor) -> int:
    """Flat index, in the whole tensor, of a DTensor shard's first element (0 for a tensor).

    Shards of a dimension before the last cover whole trailing rows, so the index is the
    row-major offset of the shard's first row.
    """
    if not hasattr(param, "placements"):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offsets = compute_local_shape_and_global_offset(
        param.shape, param.device_mesh, param.placements
    )
    stride = torch.empty(param.shape, device="meta").stride()
    return sum(o * s for o, s in zip(offsets, stride, strict=True))
