"""``AdaBalanceTrainer``: a Trainer that knows the AdaBalance optimizer names.

It also makes the Trainer's checkpoints crash-safe. transformers writes ``checkpoint-N`` in
place, so a job killed during a save leaves a half-written folder that
``resume_from_checkpoint=True`` then picks. Here each checkpoint is written into a staging
folder and renamed into place with a manifest of sizes and SHA-256 only once complete
(:mod:`adabalance_hf.checkpoint`), and resuming takes the newest checkpoint that verifies.

transformers internals relied on (``transformers/trainer.py``, checked against 5.23):

* ``Trainer._save_checkpoint`` builds the folder as ``os.path.join(self._get_output_dir(trial),
  f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")`` and writes every file of the checkpoint
  (model, optimizer, scheduler, scaler, RNG states, ``trainer_state.json``) below it, then
  pushes it (``self._push_from_checkpoint(output_dir)``) and rotates the checkpoints of that
  same run dir. Overriding ``_get_output_dir`` for the duration of the ``super()`` call therefore
  sends the whole save into the staging folder; the rotation there sees one checkpoint and
  deletes nothing.
* In that method ``state.best_model_checkpoint`` becomes ``os.path.join(run_dir,
  f"checkpoint-{best_global_step}")`` when that folder exists, i.e. (run dir redirected) the
  staging path when the checkpoint being saved is the best. It is mapped to the final path
  afterwards and ``trainer_state.json`` written again, before the commit.
* ``Trainer._push_from_checkpoint(checkpoint_folder)`` uploads the folder in the background;
  it is deferred until the folder has its final name.
* ``Trainer.train(resume_from_checkpoint=...)`` treats ``True`` with ``get_last_checkpoint``
  (the highest-numbered folder, complete or not); the override passes it a resolved path.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from ...checkpoint import atomic
from ...optim import AdaBalance
from .callback import add_diagnostics_callback
from .checkpointing import resolve_resume_checkpoint, rotate_trainer_checkpoints
from .kwargs import adabalance_optimizer_kwargs
from .optim_names import is_adabalance_name

__all__ = ["AdaBalanceTrainer"]


class AdaBalanceTrainer(Trainer):
    """``transformers.Trainer`` that builds AdaBalance for the AdaBalance ``optim`` names.

    Use with :class:`AdaBalanceTrainingArguments` (``optim="adabalance"``, ``--optim adabalance``,
    ...). Built-in names go to ``Trainer.get_optimizer_cls_and_kwargs`` unchanged, and the
    ``optimizers=`` and ``optimizer_cls_and_kwargs=`` arguments work as in ``Trainer``.
    Parameters are grouped by ``Trainer.create_optimizer`` as usual: no weight decay on biases
    and LayerNorm/RMSNorm weights.

    Checkpoints are atomic: ``checkpoint-N`` appears only once every file is written, listed
    with its size and SHA-256 in ``adabalance_manifest.json`` and flushed to disk; a save killed
    half-way leaves only a hidden ``.checkpoint-N.incomplete`` folder, deleted by the next save.
    ``save_total_limit`` counts as in transformers (the best checkpoint is kept too) and never
    deletes the newest complete checkpoint. ``train(resume_from_checkpoint=...)`` also accepts
    ``"auto"``; see :meth:`train`.

    Args:
        *args: positional arguments of ``transformers.Trainer``.
        adabalance_diagnostics (bool, optional): install an
            :class:`AdaBalanceDiagnosticsCallback` that adds the bounds and the fractions of
            elements at them to the logs. Default: ``True``
        **kwargs: keyword arguments of ``transformers.Trainer``.
    """

    # While a checkpoint is being saved: the staging folder _get_output_dir returns, and the
    # pushes _push_from_checkpoint deferred.
    _adabalance_staging: str | None = None
    _adabalance_pushes: tuple[str, ...] | list[str] = ()

    def __init__(self, *args: Any, adabalance_diagnostics: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if adabalance_diagnostics:
            add_diagnostics_callback(self)

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
                :class:`~adabalance_hf.checkpoint.CheckpointError` naming the path, the reason
                and the checkpoint to use instead). ``True`` and ``"auto"`` skip damaged or
                unfinished checkpoints, logging each with its path and reason.
            *args: further positional arguments of ``Trainer.train``.
            **kwargs: further keyword arguments of ``Trainer.train``.

        Returns:
            TrainOutput: as ``Trainer.train``.
        """
        resolved = self._resolve_resume(resume_from_checkpoint)
        return super().train(resolved, *args, **kwargs)

    def _resolve_resume(self, value: str | bool | None) -> str | None:
        if value is None or value is False:
            return None
        if self.args.world_size <= 1:
            return resolve_resume_checkpoint(value, self.args.output_dir)
        # The main process reads and checksums; every process gets its answer (or its error).
        from accelerate.utils import broadcast_object_list

        answer: list[Any] = [None]
        if self.args.process_index == 0:
            try:
                answer[0] = ("ok", resolve_resume_checkpoint(value, self.args.output_dir))
            except Exception as error:
                answer[0] = ("error", error)
        broadcast_object_list(answer, from_process=0)
        kind, result = answer[0]
        if kind == "error":
            raise result
        return result

    def _get_output_dir(self, trial: Any) -> str:
        # During _save_checkpoint's super() call: the staging folder (see the module docstring).
        if self._adabalance_staging is not None:
            return self._adabalance_staging
        return super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._adabalance_staging is not None:
            self._adabalance_pushes.append(checkpoint_folder)
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """``Trainer._save_checkpoint`` into a staging folder, committed once complete.

        The main process (``args.should_save``) prepares the staging folder, every process
        writes its part into it as in transformers, and the main process commits it (manifest,
        fsync, rename) and rotates the checkpoints, with barriers in between.
        """
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = os.path.join(run_dir, name)
        # super() writes into <staging>/checkpoint-N: the hidden .checkpoint-N.incomplete folder
        # of adabalance_hf.checkpoint (which rotation cleans up), one level down, so that the
        # folder keeps its name checkpoint-N for everything transformers does with it.
        staging = atomic.staging_dir(final)
        staged = os.path.join(staging, name)
        if self.args.should_save:
            atomic.prepare_staging(final)
        self.accelerator.wait_for_everyone()
        self._adabalance_staging, self._adabalance_pushes = str(staging), []
        try:
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()
        except Exception:
            if self.args.should_save:  # free the space (e.g. after ENOSPC); older ones stay
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._adabalance_staging, pushes = None, self._adabalance_pushes
        if self.state.best_model_checkpoint == staged:
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
        if self.args.should_save:
            # Through the module, so tests can intercept atomic.commit_checkpoint.
            atomic.commit_checkpoint(staged, final, {"global_step": self.state.global_step})
            shutil.rmtree(staging, ignore_errors=True)  # empty now
            rotate_trainer_checkpoints(
                run_dir, self.args.save_total_limit, self.state.best_model_checkpoint
            )
        self.accelerator.wait_for_everyone()
        if pushes:
            super()._push_from_checkpoint(final)

    @staticmethod
    def get_optimizer_cls_and_kwargs(
        args: TrainingArguments, model: nn.Module | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Return the optimizer class and its keyword arguments for ``args.optim``.

        Args:
            args (TrainingArguments): the training arguments.
            model (nn.Module, optional): the model; needed by some built-in optimizers.

        Returns:
            tuple: ``(AdaBalance, adabalance_optimizer_kwargs(args))`` for an AdaBalance name,
            else what ``Trainer.get_optimizer_cls_and_kwargs`` returns.
        """
        if is_adabalance_name(args.optim):
            return AdaBalance, adabalance_optimizer_kwargs(args)
        return Trainer.get_optimizer_cls_and_kwargs(args, model)
