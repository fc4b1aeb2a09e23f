"""Checks at train start that a stock ``Trainer`` lacks, in one callback, ``TrainerChecks``.

* The launch: a launcher that announced ``N`` processes but built another world (``accelerate
  launch --config_file recipes/configs/multi_cpu.yaml`` without ``--use_cpu true``: every rank
  training alone into one output folder) stops with the fix
  (:func:`~adabalance_hf.distributed.check_trainer_launch`).
* The optimizer's parameters: an optimizer object built from a model before PEFT
  (``get_peft_model``, or TRL's ``peft_config=``) wrapped it holds the base weights, which the
  adapter froze, and none of the adapter's new tensors: every step then updates nothing, and
  nothing says so. That is true of any optimizer object.
* Clipping: AdaBalance with the fine-tuning settings (``gamma < 1e-3`` and ``beta3 < 0.999``)
  under ``max_grad_norm=0`` (no clipping) gets a warning: without clipping such runs diverged
  on a tiny GPT-2 (``benchmarks/results/stability_envelope.md``).

``AdaBalanceTrainer`` installs the callback; with any other Trainer pass
``callbacks=[TrainerChecks()]``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ...distributed.launch_checks import check_trainer_launch
from ...optim import AdaBalance

__all__ = ["TrainerChecks", "check_clipping", "check_optimizer_holds_trainable_parameters"]

logger = logging.getLogger(__name__)

_FIRST_NAMES = 5
# Set on the TrainerState once a TrainerChecks has run in this train() call.
_DONE = "_adabalance_checks_done"
_FIX = (
    "Build the optimizer after the model is wrapped (after get_peft_model, or from "
    "trainer.model), or let the Trainer build it: pass optimizer_cls_and_kwargs=(AdaBalance, "
    "adabalance_optimizer_kwargs(args)) instead of optimizers=(optimizer, None), or set "
    "optim='adabalance' (--optim adabalance)"
)


def _engine_owns_parameters(args: TrainingArguments | None) -> str | None:
    """The engine whose optimizer holds flat shards instead of the model's parameters, if any."""
    if args is None:
        return None
    if getattr(args, "deepspeed", None):
        return "DeepSpeed"
    if getattr(args, "fsdp", None):
        return "FSDP"
    return None


def check_optimizer_holds_trainable_parameters(
    model: nn.Module, optimizer: Any, args: TrainingArguments | None = None
) -> None:
    """Raise if the optimizer holds none of ``model``'s trainable parameters; warn if some.

    Parameters are compared by identity. Under DeepSpeed or FSDP (``args.deepspeed``,
    ``args.fsdp``) the optimizer holds the engine's flat shards, so nothing is checked.

    Args:
        model (nn.Module): the model being trained (``trainer.model``, a ``PeftModel`` with PEFT).
        optimizer: the optimizer, or a wrapper with ``param_groups`` (accelerate's).
        args (TrainingArguments, optional): the training arguments, to recognise the engines.
            Default: ``None``

    Raises:
        ValueError: if the model has trainable parameters and the optimizer holds none of them.

    Warns:
        UserWarning: if the optimizer holds some of them; it names how many are missing and
            the first few.
    """
    engine = _engine_owns_parameters(args)
    if engine is not None or optimizer is None or model is None:
        if engine is not None:
            logger.info("%s owns the optimizer's parameters: their coverage is not checked", engine)
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return
    missing = [name for name, p in trainable if id(p) not in held]
    if len(missing) == len(trainable):
        raise ValueError(
            f"the optimizer ({type(optimizer).__name__}) holds none of the model's "
            f"{len(trainable)} trainable parameters (first: {', '.join(missing[:_FIRST_NAMES])}), "
            f"so training would change nothing. It was most likely built before the model was "
            f"wrapped (PEFT's get_peft_model or a trainer's peft_config replace the trainable "
            f"tensors). {_FIX}."
        )
    if missing:
        warnings.warn(
            f"the optimizer ({type(optimizer).__name__}) does not hold {len(missing)} of the "
            f"model's {len(trainable)} trainable parameters; they will not be trained (first: "
            f"{', '.join(missing[:_FIRST_NAMES])}). If they should be trained: {_FIX}. If not, "
            f"set requires_grad=False on them.",
            UserWarning,
            stacklevel=2,
        )


def find_adabalance(optimizer: Any) -> AdaBalance | None:
    """Return the AdaBalance inside ``optimizer``, or ``None``.

    accelerate, DeepSpeed and others wrap the optimizer and keep it in ``.optimizer``.
    """
    for _ in range(8):
        if optimizer is None or isinstance(optimizer, AdaBalance):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def check_clipping(args: TrainingArguments, optimizer: Any) -> None:
    """Warn if AdaBalance runs with the fine-tuning settings and the Trainer does not clip.

    Args:
        args (TrainingArguments): the training arguments (``max_grad_norm`` is read).
        optimizer: the optimizer, or a wrapper holding it in ``.optimizer`` (accelerate's).

    Warns:
        UserWarning: naming ``max_grad_norm``, the settings, the measured risk and the fix.
    """
    if getattr(args, "max_grad_norm", None):  # clipping on
        return
    optimizer = find_adabalance(optimizer)
    if optimizer is None:
        return
    risky = [g for g in optimizer.param_groups if g["gamma"] < 1e-3 and g["beta3"] < 0.999]
    if risky:
        group = risky[0]
        warnings.warn(
            f"max_grad_norm={args.max_grad_norm}: the Trainer does not clip gradients, and "
            f"AdaBalance runs with gamma={group['gamma']}, beta3={group['beta3']} (the "
            f"fine-tuning settings). Without clipping, such runs diverged within 5-30 steps on "
            f"a tiny GPT-2 at lr 3e-3 (benchmarks/results/stability_envelope.md). Keep "
            f"max_grad_norm=1.0 (the Trainer's default), or set gamma=1e-3 in optim_args.",
            UserWarning,
            stacklevel=2,
        )


class TrainerChecks(TrainerCallback):
    """At train start, check the launch, the optimizer's parameters and clipping (see the module).

    Args:
        launch (bool, optional): run :func:`~adabalance_hf.distributed.check_trainer_launch`.
            Default: ``True``
        parameters (bool, optional): run :func:`check_optimizer_holds_trainable_parameters`.
            Default: ``True``
        clipping (bool, optional): run :func:`check_clipping`. Default: ``True``
    """

    def __init__(
        self, *, launch: bool = True, parameters: bool = True, clipping: bool = True
    ) -> None:
        self.launch = launch
        self.parameters = parameters
        self.clipping = clipping

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """Run the checks.

        Args:
            args (TrainingArguments): the training arguments.
            state (TrainerState): the Trainer's state.
            control (TrainerControl): the Trainer's control flags.
            model (nn.Module, optional): the model being trained.
            optimizer (torch.optim.Optimizer, optional): the Trainer's (wrapped) optimizer.
            **kwargs: the other objects the Trainer passes to callbacks.

        Raises:
            DistributedSetupError: for a launch whose processes each train alone.
            ValueError: if the optimizer holds none of the model's trainable parameters.

        Warns:
            UserWarning: if it misses some, or AdaBalance's fine-tuning settings run unclipped.
        """
        if vars(state).get(_DONE) is not None:
            return  # another TrainerChecks (the diagnostics callback is one) ran them
        vars(state)[_DONE] = True  # a fresh TrainerState each train(): they run once per call
        if self.launch:
            check_trainer_launch(args)
        if self.parameters:
            check_optimizer_holds_trainable_parameters(model, optimizer, args)
        if self.clipping:
            check_clipping(args, optimizer)
