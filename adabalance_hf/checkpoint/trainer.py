"""Crash-safe checkpoints for any ``transformers.Trainer`` subclass, with or without AdaBalance.

transformers writes ``checkpoint-N`` in place, so a job killed during a save leaves a
half-written folder that ``resume_from_checkpoint=True`` then picks. With
:class:`AtomicCheckpointsMixin` each checkpoint is written into a staging folder and renamed into
place with a manifest of sizes and SHA-256 only once complete (:mod:`adabalance_hf.checkpoint`),
and resuming takes the newest checkpoint that verifies. The private ``Trainer`` methods it
overrides are listed, with what it relies on, in
``adabalance_hf/integrations/transformers/_private_api.py``.

This module imports transformers; ``adabalance_hf.checkpoint`` loads it on first use of
``AtomicCheckpointsMixin``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from .collective import collective_checkpoint
from .resume import resolve_resume_checkpoint
from .rotation import rotate_trainer_checkpoints

__all__ = ["AtomicCheckpointsMixin"]

logger = logging.getLogger("adabalance_hf")

_PREFIX = f"{PREFIX_CHECKPOINT_DIR}-"


class AtomicCheckpointsMixin:
    """Make a Trainer's checkpoints atomic and its resume verified.

    Put it before the Trainer class in the bases (its methods call ``super()``; ``Trainer``'s
    do not, so after it they would never run, and a class that does so is refused)::

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

    Raises:
        TypeError: when a class puts it after ``transformers.Trainer`` in its MRO.
    """

    # Set while _save_checkpoint runs: the staging folder, and the pushes deferred until commit.
    _atomic_staging: str | None = None
    _atomic_pushes: list[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if Trainer in mro and mro.index(Trainer) < mro.index(AtomicCheckpointsMixin):
            first = [b for b in cls.__bases__ if issubclass(b, AtomicCheckpointsMixin)]
            rest = [b for b in cls.__bases__ if b not in first]
            fixed = ", ".join(b.__name__ for b in first + rest)
            raise TypeError(
                f"class {cls.__name__}: AtomicCheckpointsMixin comes after transformers.Trainer "
                f"in its bases, where Trainer's methods (which do not call super()) hide it, so "
                f"its checkpoints would silently not be atomic. Put the mixin first: "
                f"class {cls.__name__}({fixed})"
            )

    def _atomic_resume_checkpoint(self, value: str | bool | None) -> str | None:
        """The checkpoint ``train(resume_from_checkpoint=value)`` resumes from, on every process.

        The main process resolves it (reading and checksumming); every process gets its answer,
        or its error.
        """
        if value is None or value is False:
            return None
        if self.args.world_size <= 1:
            return _resolve(value, self.args.output_dir)
        from accelerate.utils import broadcast_object_list

        answer: list[Any] = [None]
        if self.args.process_index == 0:
            try:
                answer[0] = ("ok", _resolve(value, self.args.output_dir))
            except Exception as error:
                answer[0] = ("error", error)
        broadcast_object_list(answer, from_process=0)
        kind, result = answer[0]
        if kind == "error":
            raise result
        return result

    def train(
        self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any
    ) -> TrainOutput:
        """``Trainer.train``, resuming only from a complete, verified checkpoint.

        Args:
            resume_from_checkpoint (str or bool, optional): ``None``/``False``: start from
                scratch. ``True``: the newest complete checkpoint in ``args.output_dir``;
                ``ValueError`` if there is none, as in transformers. ``"auto"``: the same, but
                with none found, start from scratch, so a job script can be run again unchanged
                after a preemption (``--resume_from_checkpoint auto`` on a command line). A
                path: that checkpoint, verified against its manifest (a damaged one raises
                :class:`~adabalance_hf.checkpoint.ResumeError` naming the path, the reason and
                the checkpoint to use instead). ``True`` and ``"auto"`` skip damaged or
                unfinished checkpoints, logging each with its path and reason.
            *args: further positional arguments of ``Trainer.train``.
            **kwargs: further keyword arguments of ``Trainer.train``.
        """
        resolved = self._atomic_resume_checkpoint(resume_from_checkpoint)
        return super().train(resolved, *args, **kwargs)

    def _get_output_dir(self, trial: Any) -> str:
        # During _save_checkpoint's call of the next one: the staging folder.
        if self._atomic_staging is not None:
            return self._atomic_staging
        return super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._atomic_staging is not None:
            self._atomic_pushes.append(checkpoint_folder)  # pushed once it has its final name
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """``Trainer._save_checkpoint`` into a staging folder, committed once complete.

        Through :func:`~adabalance_hf.checkpoint.collective_checkpoint`: the main process
        (``args.should_save``) prepares the staging folder, every process writes its part into
        it as in transformers, and the main process alone commits it (manifest, fsync, rename),
        with barriers in between; then it rotates the checkpoints. Another process writing the
        same checkpoint (a misconfigured launch) is a clear error, not a collision.

        Args:
            model (nn.Module): as in ``Trainer._save_checkpoint``.
            trial: the hyper-parameter search trial, or ``None``.
        """
        run_dir = self._get_output_dir(trial)
        name = f"{_PREFIX}{self.state.global_step}"
        final = os.path.join(run_dir, name)
        # The parent writes into <staging>/checkpoint-N (nested=True): the folder keeps its name
        # checkpoint-N for all transformers does with it.
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
                super()._save_checkpoint(model, trial)
            finally:
                self._atomic_staging, pushes = None, self._atomic_pushes
            if self.state.best_model_checkpoint == staged:
                self.state.best_model_checkpoint = final
                if self.args.should_save:
                    self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
        if self.args.should_save:
            rotate_trainer_checkpoints(
                run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, _PREFIX
            )
        self.accelerator.wait_for_everyone()
        if pushes:
            self._push_from_checkpoint(final)


def _resolve(value: str | bool, output_dir: str) -> str | None:
    """:func:`resolve_resume_checkpoint` as the Trainer's ``resume_from_checkpoint`` means it."""
    path = resolve_resume_checkpoint(
        value,
        output_dir,
        _PREFIX,
        unverified_marker=TRAINER_STATE_NAME,  # Trainer._save_checkpoint writes it last
        option="resume_from_checkpoint",
        log=logger.warning,
    )
    return None if path is None else str(path)
