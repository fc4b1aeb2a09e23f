"""AdaBalance under distributed engines: a factory, launch checks and state accounting.

``create_optimizer(model, lr=..., weight_decay=...)`` builds AdaBalance with transformers-style
parameter groups for a single process, DDP, accelerate and DeepSpeed; ``sharding="zero1"`` wraps
it in ``ZeroRedundancyOptimizer`` and ``sharding="fsdp2"`` checks that the model was sharded
with ``fully_shard`` first. ``check_launch`` and ``check_trainer_launch`` catch launches that
silently run fewer processes than requested.
"""

from ..decay_groups import param_groups
from .factory import Sharding, create_optimizer
from .launch_checks import (
    DistributedSetupError,
    DistributedSetupWarning,
    check_launch,
    check_trainer_launch,
    launched_world_size,
)
from .state_bytes import local_optimizer, optimizer_state_bytes

__all__ = [
    "DistributedSetupError",
    "DistributedSetupWarning",
    "Sharding",
    "check_launch",
    "check_trainer_launch",
    "create_optimizer",
    "launched_world_size",
    "local_optimizer",
    "optimizer_state_bytes",
    "param_groups",
]
