"""Every private transformers API this integration relies on, named in one place.

Checked against transformers 4.57.6 (the floor in ``pyproject.toml``) and 5.24.0;
``tests/test_transformers_private_api.py`` checks that each still exists with the parameters
used here, in both of CI's environments.

``Trainer`` methods wrapped (by the order-free mixins, so the names are strings):

* ``_save_checkpoint(model, trial)``: writes every file of ``checkpoint-N`` (model, optimizer,
  scheduler, scaler, RNG states, ``trainer_state.json``) below
  ``os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")``, sets
  ``state.best_model_checkpoint`` to that path when it is the best, pushes it with
  ``self._push_from_checkpoint(path)`` and rotates the checkpoints of that run dir.
  :class:`AtomicCheckpointsMixin` sends the whole save into a staging folder by overriding
  ``_get_output_dir`` for the duration of the call, and defers the push.
* ``_get_output_dir(trial)``: the run dir of a (hyper-parameter search) trial.
* ``_push_from_checkpoint(checkpoint_folder)``: uploads a checkpoint folder in the background.
* ``_load_optimizer_and_scheduler(checkpoint)``: loads ``optimizer.pt`` into ``self.optimizer``
  on resume; :class:`AdaBalanceTrainerMixin` re-words the error of a state dict another
  optimizer wrote, for Trainer users.

Other private uses:

* ``Trainer.get_decay_parameter_names(self, model)`` is called unbound with ``self=None`` by
  :func:`trainer_param_groups` (it reads nothing from the instance).
* ``transformers.trainer.TRAINER_STATE_NAME``: the file ``_save_checkpoint`` writes last.
* ``TrainingArguments.__post_init__`` converts ``optim`` with ``OptimizerNames(...)``, and
  ``HfArgumentParser`` builds ``--optim``'s choices from that enum: why
  :class:`AdaBalanceArgumentsMixin` redeclares the field and passes a placeholder name.
"""

from __future__ import annotations

__all__ = [
    "CHECKED_VERSIONS",
    "GET_OUTPUT_DIR",
    "LOAD_OPTIMIZER_AND_SCHEDULER",
    "PRIVATE_TRAINER_METHODS",
    "PUSH_FROM_CHECKPOINT",
    "SAVE_CHECKPOINT",
]

CHECKED_VERSIONS = ("4.57.6", "5.24.0")

SAVE_CHECKPOINT = "_save_checkpoint"
GET_OUTPUT_DIR = "_get_output_dir"
PUSH_FROM_CHECKPOINT = "_push_from_checkpoint"
LOAD_OPTIMIZER_AND_SCHEDULER = "_load_optimizer_and_scheduler"

#: private ``Trainer`` method -> the parameters (after ``self``) this integration passes.
PRIVATE_TRAINER_METHODS: dict[str, tuple[str, ...]] = {
    SAVE_CHECKPOINT: ("model", "trial"),
    GET_OUTPUT_DIR: ("trial",),
    PUSH_FROM_CHECKPOINT: ("checkpoint_folder",),
    LOAD_OPTIMIZER_AND_SCHEDULER: ("checkpoint",),
    "get_decay_parameter_names": ("model",),
}
