"""Detect launches that silently run the wrong number of processes or ignore a requested engine.

Measured with accelerate 1.15 and torch 2.13 on CPU:

* ``accelerate launch --cpu --num_processes 2`` (or a config with ``distributed_type:
  MULTI_CPU`` and no mpirun hostfile) runs ONE process (the "simple launcher"). That process
  gets ``MASTER_ADDR``/``MASTER_PORT`` (only set for ``--num_processes > 1``) but no
  ``WORLD_SIZE``.
* ``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs starts two
  processes, but ``Accelerator()`` without ``cpu=True`` leaves each one a world of size 1 (both
  train alone as rank 0).
* DeepSpeed through accelerate on CPU counted a world size of 1 unless a gloo
  ``PartialState`` was created before the ``Accelerator``.
* FSDP (``ACCELERATE_USE_FSDP``) and fp16 mixed precision are ignored on CPU.

:func:`check_launch` compares what the launcher asked for (environment variables) with what was
initialised (the ``torch.distributed`` process group, accelerate's ``PartialState``) and warns.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch.distributed as dist

__all__ = ["DistributedSetupWarning", "check_launch", "launched_world_size"]

# Variables that launchers set to the total number of processes: torchrun/accelerate, MPI
# implementations (Intel MPI/MPICH, Open MPI, MVAPICH), Slurm.
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class DistributedSetupWarning(UserWarning):
    """A launch that looks distributed but is not (or that drops a requested engine)."""


def launched_world_size() -> int | None:
    """Return the number of processes the launcher announced in the environment.

    Returns:
        int or None: the first of ``WORLD_SIZE``, ``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``,
        ``MV2_COMM_WORLD_SIZE`` that is set to an integer, else ``None``.
    """
    for name in _WORLD_SIZE_VARS:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _accelerate_state() -> object | None:
    """accelerate's ``PartialState`` if this process created one, without importing accelerate."""
    module = sys.modules.get("accelerate.state")
    if module is None:
        return None
    state_cls = getattr(module, "PartialState", None)
    if state_cls is None or not getattr(state_cls, "_shared_state", None):
        return None
    return state_cls()


def _has_accelerator_device() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def _true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def check_launch(*, sharded_model: bool | None = None, stacklevel: int = 2) -> list[str]:
    """Warn about launches where processes, engine or precision silently differ from the request.

    Called by :func:`create_optimizer`; call it again after building the ``Accelerator`` (the
    checks that compare with an initialised process group can only run then).

    The checks:

    * the launcher announced ``N > 1`` processes (``WORLD_SIZE`` and the MPI equivalents) but
      the initialised ``torch.distributed`` group or accelerate's ``PartialState`` has another
      size, or none was initialised although accelerate's state already exists;
    * ``accelerate launch`` started one process with ``MASTER_ADDR``/``MASTER_PORT`` but no
      ``WORLD_SIZE`` (``--cpu --num_processes N``: the simple launcher);
    * ``ACCELERATE_USE_FSDP`` is set but accelerate's state is not FSDP, or (before the state
      exists) the machine has no GPU and the model is not already sharded (FSDP ignored);
    * ``ACCELERATE_MIXED_PRECISION=fp16`` while accelerate runs on CPU.

    Args:
        sharded_model (bool, optional): whether the model's parameters are already DTensors
            (sharded with ``fully_shard``), in which case the FSDP check passes.
            Default: ``None`` (not known)
        stacklevel (int, optional): ``stacklevel`` of the warnings. Default: ``2``

    Returns:
        list[str]: the problems found (each one was also warned as a
        :class:`DistributedSetupWarning`); empty when the setup looks consistent.
    """
    problems: list[str] = []
    announced = launched_world_size()
    state = _accelerate_state()
    group_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else None

    if announced is not None and announced > 1:
        fix = (
            "On CPU create `Accelerator(cpu=True)` (with DeepSpeed: create "
            "`PartialState(backend='gloo')` first), or call "
            "`torch.distributed.init_process_group('gloo')` before building the optimizer."
        )
        if group_size is not None and group_size != announced:
            problems.append(
                f"the launcher announced {announced} processes (WORLD_SIZE) but the "
                f"torch.distributed process group has {group_size}. {fix}"
            )
        state_size = getattr(state, "num_processes", None) if state is not None else None
        if state_size is not None and state_size != announced:
            problems.append(
                f"the launcher announced {announced} processes (WORLD_SIZE) but accelerate's "
                f"state counts num_processes={state_size} (distributed_type="
                f"{getattr(state, 'distributed_type', '?')}): every process trains alone on "
                f"its data as rank 0. {fix}"
            )
        if group_size is None and state_size is None:
            problems.append(
                f"the launcher announced {announced} processes (WORLD_SIZE) but no "
                f"torch.distributed process group is initialised yet: unless you initialise "
                f"one before training (e.g. by creating the Accelerator), every process will "
                f"train alone. {fix}"
            )
    elif (
        announced is None
        and os.environ.get("ACCELERATE_USE_CPU") is not None
        and os.environ.get("MASTER_PORT")
        and group_size is None
    ):
        problems.append(
            "`accelerate launch` started this process with MASTER_ADDR/MASTER_PORT (as it does "
            "for --num_processes > 1) but without WORLD_SIZE: with --cpu, or a config with "
            "distributed_type MULTI_CPU and no mpirun hostfile, its simple launcher runs ONE "
            "process (accelerate 1.15). Launch with `accelerate launch --multi_gpu "
            "--num_processes N` and `Accelerator(cpu=True)`, or with `torchrun "
            "--nproc_per_node N`."
        )

    if _true("ACCELERATE_USE_FSDP") and not sharded_model:
        state_type = str(getattr(state, "distributed_type", "")) if state is not None else None
        if state_type is not None and not state_type.endswith("FSDP"):
            ignored = f"accelerate's state has distributed_type={state_type}"
        elif state_type is None and not _has_accelerator_device():
            ignored = "this machine has no GPU, and accelerate only uses FSDP on accelerators"
        else:
            ignored = ""
        if ignored:
            problems.append(
                f"ACCELERATE_USE_FSDP is set but FSDP is silently ignored: {ignored} "
                f"(accelerate 1.15 never selects FSDP on CPU). For sharded training on CPU apply "
                f"`torch.distributed.fsdp.fully_shard` yourself and build the optimizer after "
                f"it with create_optimizer(model, ..., sharding='fsdp2')."
            )
    mixed = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    device = getattr(state, "device", None) if state is not None else None
    on_cpu = _true("ACCELERATE_USE_CPU") or getattr(device, "type", None) == "cpu"
    if mixed == "fp16" and on_cpu:
        problems.append(
            "ACCELERATE_MIXED_PRECISION=fp16 on CPU: accelerate 1.15 ignores it and trains in "
            "fp32. Use mixed_precision='bf16' on CPU, or torch.autocast('cpu', "
            "dtype=torch.float16) with torch.amp.GradScaler('cpu') yourself."
        )

    for problem in problems:
        warnings.warn(
            f"adabalance_hf: {problem}", DistributedSetupWarning, stacklevel=stacklevel + 1
        )
    return problems
