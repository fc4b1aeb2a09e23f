"""The private transformers APIs the integration relies on still exist as it uses them.

Runs in both CI environments (the transformers floor and the newest), so a transformers release
that renames or re-signs one fails here, naming it, instead of deep inside a training run.
"""

from __future__ import annotations

import inspect

import pytest
import transformers
from transformers import Trainer, TrainingArguments

from adabalance_hf.integrations.transformers import _private_api
from adabalance_hf.integrations.transformers.atomic_checkpoints import AtomicCheckpointsMixin
from adabalance_hf.integrations.transformers.trainer import AdaBalanceTrainerMixin


@pytest.mark.parametrize("name", list(_private_api.PRIVATE_TRAINER_METHODS))
def test_private_trainer_method_exists_with_the_parameters_used(name):
    method = getattr(Trainer, name, None)
    assert method is not None, f"transformers {transformers.__version__}: Trainer.{name} is gone"
    parameters = [p for p in inspect.signature(method).parameters if p != "self"]
    expected = list(_private_api.PRIVATE_TRAINER_METHODS[name])
    assert parameters[: len(expected)] == expected, (transformers.__version__, name, parameters)


def test_every_wrapped_private_method_is_listed():
    wrapped = set(AtomicCheckpointsMixin._order_free) | set(AdaBalanceTrainerMixin._order_free)
    private = {name for name in wrapped if name.startswith("_") and not name.startswith("__")}
    assert private <= set(_private_api.PRIVATE_TRAINER_METHODS)


def test_other_private_names_exist():
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.training_args import OptimizerNames

    assert TRAINER_STATE_NAME == "trainer_state.json"
    assert OptimizerNames("adamw_torch") is OptimizerNames.ADAMW_TORCH
    # Trainer.get_decay_parameter_names reads nothing from self (called unbound with None).
    assert "self." not in inspect.getsource(Trainer.get_decay_parameter_names).split('"""')[-1]
    assert "optim" in {f for f in TrainingArguments.__dataclass_fields__}
