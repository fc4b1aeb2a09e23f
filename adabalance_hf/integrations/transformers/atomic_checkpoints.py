"""Crash-safe checkpoints for any ``transformers.Trainer`` subclass, with or without AdaBalance.

transformers writes ``checkpoint-N`` in place, so a job killed during a save leaves a
half-written folder that ``resume_from_checkpoint=True`` then picks. With
:class:`AtomicCheckpointsMixin` each checkpoint is written into a staging folder and renamed into
place with a manifest of sizes and SHA-256 only once complete (:mod:`adabalance_hf.checkpoint`),
and resuming takes the newest checkpoint that verifies. The private ``Trainer`` methods it wraps
are listed, with what it relies on, in :mod:`._private_api`.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from ...checkpoint import collective_checkpoint
from ._mixin import OrderFreeMixin
from ._private_api import GET_OUTPUT_DIR, PUSH_FROM_CHECKPOINT, SAVE_CHECKPOINT
from .checkpointing import resolve_resume_checkpoint, rotate_trainer_checkpoints

__all__ = ["AtomicCheckpointsMixin"]


def _resolve_resume(trainer: Trainer, value: str | bool | None) -> str | None:
    if value is None or value is False:
        return None
    if trainer.args.world_size <= 1:
        return resolve_resume_checkpoint(value, trainer.args.output_dir)
    # The main process reads and checksums; every process gets its answer (or its error).
    from accelerate.utils import broadcast_object_list

    answer: list[Any] = [None]
    if trainer.args.process_index == 0:
        try:
            answer[0] = ("ok", resolve_resume_checkpoint(value, trainer.args.output_dir))
        except Exception as error:
            answer[0] = ("error", error)
    broadcast_object_list(answer, from_process=0)
    kind, result = answer[0]
    if kind == "error":
        raise result
    return result


def _train(
    self: Trainer, parent: Any, resume_from_checkpoint: str | bool | None = None, *args: Any,
    **kwargs: Any,
) -> TrainOutput:  # fmt: skip
    """``Trainer.train``, resuming only from a complete, verified checkpoint.

    Args:
        resume_from_checkpoint (str or bool, optional): ``None``/``False``: start from
            scratch. ``True``: the newest complete checkpoint in ``args.output_dir``;
            ``ValueError`` if there is none, as in transformers. ``"auto"``: the same, but with
            none found, start from scratch, so a job script can be run again unchanged after a
            preemption (``--resume_from_checkpoint auto`` on a command line). A path: that
            checkpoint, verified against its manifest (a damaged one raises
            :class:`~adabalance_hf.checkpoint.CheckpointError` naming the path, the reason and
            the checkpoint to use instead). ``True`` and ``"auto"`` skip damaged or unfinished
            checkpoints, logging each with its path and reason.
        *args: further positional arguments of ``Trainer.train``.
        **kwargs: further keyword arguments of ``Trainer.train``.
    """
    return parent(_resolve_resume(self, resume_from_checkpoint), *args, **kwargs)


def _get_output_dir(self: Trainer, parent: Any, trial: Any) -> str:
    # During _save_checkpoint's call of the next one: the staging folder.
    staging = getattr(self, "_atomic_staging", None)
    return staging if staging is not None else parent(trial)


def _push_from_checkpoint(self: Trainer, parent: Any, checkpoint_folder: str) -> None:
    if getattr(self, "_atomic_staging", None) is not None:
        self._atomic_pushes.append(checkpoint_folder)  # pushed once it has its final name
        return
    parent(checkpoint_folder)


def _save_checkpoint(self: Trainer, parent: Any, model: nn.Module, trial: Any) -> None:
    """``Trainer._save_checkpoint`` into a staging folder, committed once complete.

    Through :func:`~adabalance_hf.checkpoint.collective_checkpoint`: the main process
    (``args.should_save``) prepares the staging folder, every process writes its part into it as
    in transformers, and the main process alone commits it (manifest, fsync, rename), with
    barriers in between; then it rotates the checkpoints. Another process writing the same
    checkpoint (a misconfigured launch) is a clear error, not a collision.
    """
    run_dir = getattr(self, GET_OUTPUT_DIR)(trial)
    name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
    final = os.path.join(run_dir, name)
    # The next _save_checkpoint writes into <staging>/checkpoint-N (nested=True): the folder keeps
    # its name checkpoint-N for all transformers does with it.
    with collective_checkpoint(
        final,
        is_main_process=self.args.should_save,
        wait_for_everyone=self.accelerator.wait_for_everyone,
        metadata={"global_step": self.state.global_step},
        nested=True,
    ) as staging:
        staged = os.path.join(staging, name)
        self._atomic_staging, self._atomic_pushes = str(staging), []
        try:
            parent(model, trial)
        finally:
            self._atomic_staging, pushes = None, self._atomic_pushes
        if self.state.best_model_checkpoint == staged:
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
    if self.args.should_save:
        rotate_trainer_checkpoints(
            run_dir, self.args.save_total_limit, self.state.best_model_checkpoint
        )
    self.accelerator.wait_for_everyone()
    if pushes:
        getattr(self, PUSH_FROM_CHECKPOINT)(final)


class AtomicCheckpointsMixin(OrderFreeMixin):
    """Make a Trainer's checkpoints atomic and its resume verified.

    Mix it into any ``transformers.Trainer`` subclass, in either order::

        class MyTrainer(AtomicCheckpointsMixin, trl.SFTTrainer):
            pass

    ``checkpoint-N`` appears only once every file is written, listed with its size and SHA-256
    in ``adabalance_manifest.json`` and flushed to disk; a save killed half-way leaves only a
    hidden ``.checkpoint-N.incomplete`` folder, deleted by the next save. ``save_total_limit``
    counts as in transformers (the best checkpoint is kept too) and never deletes the newest
    complete checkpoint. ``train(resume_from_checkpoint=...)`` verifies the checkpoint and
    also accepts ``"auto"`` (the newest complete checkpoint in ``output_dir``, or a fresh
    start). A checkpoint written by a plain ``Trainer`` (no manifest) still loads, with a
    warning.
    """

    _order_free: ClassVar[dict[str, Any]] = {
        "train": _train,
        GET_OUTPUT_DIR: _get_output_dir,
        PUSH_FROM_CHECKPOINT: _push_from_checkpoint,
        SAVE_CHECKPOINT: _save_checkpoint,
    }
