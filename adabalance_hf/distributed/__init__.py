"""AdaBalance under distributed engines: a factory, launch checks and state accounting.

``create_optimizer(model, lr=..., weight_decay=...)`` builds AdaBalance with transformers-style
parameter groups for a single process, DDP, accelerate and DeepSpeed; ``sharding="zero1"`` wraps
it in ``ZeroRedundancyOptimizer`` and ``sharding="fsdp2"`` checks that the model was sharded
with ``fully_shard`` first.
"""

from .factory import Sharding, create_optimizer, param_groups
from .launch_checks import DistributedSetupWarning, check_launch, launched_world_size
from .state_bytes import local_optimizer, optimizer_state_bytes

__all__ = [
    "DistributedSetupWarning",
    "Sharding",
    "check_launch",
    "create_optimizer",
    "launched_world_size",
    "local_optimizer",
    "optimizer_state_bytes",
    "param_groups",
]
