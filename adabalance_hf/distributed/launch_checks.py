"""Detect launches that silently run the wrong number of processes or ignore a requested engine.

Measured with accelerate 1.15, transformers 5.24 and torch 2.13 on CPU:

* ``accelerate launch --cpu --num_processes 2`` (or a config with ``distributed_type:
  MULTI_CPU`` and no mpirun hostfile) runs ONE process (the "simple launcher"). That process
  gets ``MASTER_ADDR``/``MASTER_PORT`` (only set for ``--num_processes > 1``) but no
  ``WORLD_SIZE``.
* ``accelerate launch --multi_gpu --num_processes 2`` (``recipes/configs/multi_cpu.yaml``) on a
  machine without GPUs starts two processes with ``WORLD_SIZE=2``, ``RANK``/``LOCAL_RANK`` 0 and
  1. ``Accelerator()`` without ``cpu=True`` (and a ``TrainingArguments`` without
  ``use_cpu=True``) still initialises a gloo ``torch.distributed`` group of 2, but accelerate's
  state says ``distributed_type=NO``, ``num_processes=1``: both processes train alone as rank 0
  on all the data (``TrainingArguments.world_size`` is 1) and write into one output folder.
* DeepSpeed through accelerate on CPU counted a world size of 1 unless a gloo
  ``PartialState`` was created before the ``Accelerator``.
* FSDP (``ACCELERATE_USE_FSDP``) and fp16 mixed precision are ignored on CPU.

:func:`check_launch` compares what the launcher asked for (environment variables) with what was
initialised (the ``torch.distributed`` process group, accelerate's ``PartialState``) and warns
or raises; :func:`check_trainer_launch` does the process-count part of it for a
``transformers.Trainer`` and raises with the Trainer's fix.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch.distributed as dist

if TYPE_CHECKING:
    from transformers import TrainingArguments

__all__ = [
    "DistributedSetupError",
    "DistributedSetupWarning",
    "check_launch",
    "check_trainer_launch",
    "launched_world_size",
]

# Variables that launchers set to the total number of processes: torchrun/accelerate, MPI
# implementations (Intel MPI/MPICH, Open MPI, MVAPICH), Slurm.
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

_SIMPLE_LAUNCHER = (
    "`accelerate launch` started this process with MASTER_ADDR/MASTER_PORT (as it does for "
    "--num_processes > 1) but without WORLD_SIZE: with --cpu, or a config with distributed_type "
    "MULTI_CPU and no mpirun hostfile, its simple launcher runs ONE process (accelerate 1.15)."
)


class DistributedSetupWarning(UserWarning):
    """A launch that looks distributed but is not (or that drops a requested engine)."""


class DistributedSetupError(RuntimeError):
    """A launch that silently runs another number of processes than requested; see ``problems``.

    Args:
        message (str): the whole message.
        problems (list of str, optional): each problem found. Default: ``[message]``
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


def _announced() -> tuple[str, int] | None:
    for name in _WORLD_SIZE_VARS:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return name, int(value)
    return None


def launched_world_size() -> int | None:
    """Return the number of processes the launcher announced in the environment.

    Returns:
        int or None: the first of ``WORLD_SIZE``, ``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``,
        ``MV2_COMM_WORLD_SIZE`` that is set to an integer, else ``None``.
    """
    announced = _announced()
    return announced[1] if announced is not None else None


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


@dataclass(frozen=True)
class _WorldMismatch:
    """What the launcher asked for and what this process counts, when they differ."""

    variable: str | None  # the launcher's variable; None: accelerate's simple launcher
    announced: int | None
    group_size: int | None  # the torch.distributed default group
    state_size: int | None  # accelerate's PartialState.num_processes
    state_type: str | None  # accelerate's PartialState.distributed_type


def _world_mismatch(world_size: int | None = None) -> _WorldMismatch | None:
    """The process-count check shared by :func:`check_launch` and :func:`check_trainer_launch`.

    A mismatch is: the launcher announced ``N > 1`` processes but the process group,
    accelerate's state or ``world_size`` counts another number (or neither a group nor a state
    exists yet); or accelerate's simple launcher started one process of several requested.
    """
    announced = _announced()
    state = _accelerate_state()
    group = dist.get_world_size() if dist.is_available() and dist.is_initialized() else None
    state_size = getattr(state, "num_processes", None) if state is not None else None
    state_type = str(getattr(state, "distributed_type", "?")) if state is not None else None
    if announced is not None and announced[1] > 1:
        variable, count = announced
        sizes = [size for size in (group, state_size, world_size) if size is not None]
        wrong = any(size != count for size in sizes) or (group is None and state_size is None)
    else:
        variable, count = None, None
        wrong = (
            announced is None
            and os.environ.get("ACCELERATE_USE_CPU") is not None
            and bool(os.environ.get("MASTER_PORT"))
            and group is None
        )
    if not wrong:
        return None
    return _WorldMismatch(variable, count, group, state_size, state_type)


def _launch_problems(mismatch: _WorldMismatch | None) -> list[str]:
    """check_launch's messages for a process-count mismatch."""
    if mismatch is None:
        return []
    if mismatch.announced is None:
        return [
            f"{_SIMPLE_LAUNCHER} Launch with `accelerate launch --multi_gpu --num_processes N` "
            f"and `Accelerator(cpu=True)`, or with `torchrun --nproc_per_node N`."
        ]
    fix = (
        "On CPU create `Accelerator(cpu=True)` (with DeepSpeed: create "
        "`PartialState(backend='gloo')` first), or call "
        "`torch.distributed.init_process_group('gloo')` before building the optimizer."
    )
    launched = f"the launcher announced {mismatch.announced} processes ({mismatch.variable})"
    problems = []
    if mismatch.group_size is not None and mismatch.group_size != mismatch.announced:
        problems.append(
            f"{launched} but the torch.distributed process group has {mismatch.group_size}. {fix}"
        )
    if mismatch.state_size is not None and mismatch.state_size != mismatch.announced:
        problems.append(
            f"{launched} but accelerate's state counts num_processes={mismatch.state_size} "
            f"(distributed_type={mismatch.state_type}): every process trains alone on its data "
            f"as rank 0. {fix}"
        )
    if mismatch.group_size is None and mismatch.state_size is None:
        problems.append(
            f"{launched} but no torch.distributed process group is initialised yet: unless you "
            f"initialise one before training (e.g. by creating the Accelerator), every process "
            f"will train alone. {fix}"
        )
    return problems


def _engine_problems(sharded_model: bool | None) -> list[str]:
    """FSDP or fp16 requested through accelerate's environment but ignored on CPU."""
    problems = []
    state = _accelerate_state()
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
    return problems


def _error(problems: list[str]) -> DistributedSetupError:
    if len(problems) == 1:
        return DistributedSetupError(f"adabalance_hf: {problems[0]}", problems)
    listed = "\n".join(f"  * {problem}" for problem in problems)
    return DistributedSetupError(
        f"adabalance_hf: the launch differs from what was requested:\n{listed}", problems
    )


def check_launch(
    *,
    sharded_model: bool | None = None,
    stacklevel: int = 2,
    action: Literal["warn", "error"] = "warn",
) -> list[str]:
    """Warn about (or refuse) launches where processes, engine or precision silently differ.

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
        action (str, optional): ``"warn"``: warn each problem as a
            :class:`DistributedSetupWarning`; ``"error"``: raise one
            :class:`DistributedSetupError` listing them all. Default: ``"warn"``

    Returns:
        list[str]: the problems found (each one was also warned); empty when the setup looks
        consistent.

    Raises:
        DistributedSetupError: with ``action="error"``, if a problem was found.
        ValueError: if ``action`` is neither ``"warn"`` nor ``"error"``.
    """
    if action not in ("warn", "error"):
        raise ValueError(f"check_launch: `action` must be 'warn' or 'error', got {action!r}")
    problems = _launch_problems(_world_mismatch()) + _engine_problems(sharded_model)
    if problems and action == "error":
        raise _error(problems)
    for problem in problems:
        warnings.warn(
            f"adabalance_hf: {problem}", DistributedSetupWarning, stacklevel=stacklevel + 1
        )
    return problems


def _trainer_fix(args: TrainingArguments) -> str:
    deepspeed = bool(getattr(args, "deepspeed", None)) or _true("ACCELERATE_USE_DEEPSPEED")
    if deepspeed:
        return (
            "with DeepSpeed on CPU, create `accelerate.PartialState(backend='gloo')` before the "
            "TrainingArguments (do not pass use_cpu: it turns DeepSpeed off)."
        )
    if not _has_accelerator_device():
        return (
            "this machine has no GPU: pass `--use_cpu true` on the command line "
            "(`TrainingArguments(use_cpu=True)`), which makes accelerate join the processes "
            "over gloo."
        )
    return (
        "give every process a GPU (launch as many processes as visible GPUs, check "
        "CUDA_VISIBLE_DEVICES), or pass `--use_cpu true` (`TrainingArguments(use_cpu=True)`) "
        "to train on CPU."
    )


def check_trainer_launch(args: TrainingArguments) -> None:
    """Refuse to train when the launcher started several processes but this one trains alone.

    Call it at the start of ``Trainer.train``, before the first step (the Trainer's
    ``Accelerator`` exists then). It applies :func:`check_launch`'s process-count check and
    also compares with ``args.world_size``. Typical case: ``accelerate launch --config_file
    recipes/configs/multi_cpu.yaml train.py`` on a machine without GPUs, without
    ``--use_cpu true``: two processes, each a world of one, each training on all the data and
    writing checkpoints into the same ``output_dir`` (where their saves collide).

    Args:
        args (TrainingArguments): the Trainer's arguments (``world_size`` and ``output_dir``
            are read).

    Raises:
        DistributedSetupError: naming what was launched, what was initialised and the fix:
            ``--use_cpu true`` / ``TrainingArguments(use_cpu=True)`` on a CPU-only machine,
            a ``PartialState(backend='gloo')`` with DeepSpeed on CPU, a launcher that starts
            every process (not accelerate's simple launcher).
    """
    world_size = getattr(args, "world_size", None)
    mismatch = _world_mismatch(world_size=world_size)
    if mismatch is None:
        return
    output_dir = getattr(args, "output_dir", None)
    if mismatch.announced is None:
        raise DistributedSetupError(
            f"adabalance_hf: {_SIMPLE_LAUNCHER} This Trainer would train alone "
            f"(TrainingArguments.world_size={world_size}). Fix: launch with `accelerate launch "
            f"--multi_gpu --num_processes N` (e.g. --config_file "
            f"recipes/configs/multi_cpu.yaml) or `torchrun --nproc_per_node N`, with "
            f"`--use_cpu true` (`TrainingArguments(use_cpu=True)`) on a machine without GPUs."
        )
    seen = [f"TrainingArguments.world_size={world_size}"]
    if mismatch.state_size is not None:
        seen.append(
            f"accelerate's state num_processes={mismatch.state_size} "
            f"(distributed_type={mismatch.state_type})"
        )
    if mismatch.group_size is not None:
        seen.append(f"torch.distributed process group of {mismatch.group_size}")
    rank = os.environ.get("RANK")
    raise DistributedSetupError(
        f"adabalance_hf: the launcher started {mismatch.announced} processes "
        f"({mismatch.variable}={mismatch.announced}{f', this one RANK={rank}' if rank else ''}) "
        f"but this process initialised another world: {', '.join(seen)}. Each process would "
        f"train alone as rank 0 on all the data, and all of them would write into output_dir "
        f"{output_dir}, colliding on its checkpoints. Fix: {_trainer_fix(args)}"
    )
