"""The transformers internals this package relies on still exist as it uses them.

Runs in both CI environments (the transformers floor and the newest), so a transformers release
that renames or re-signs one fails here, naming it, instead of deep inside a training run. When
one is gone anyway, ``import adabalance_hf`` must still work: the names are then unavailable,
with one warning that names the transformers version and what still works.
"""

from __future__ import annotations

import enum
import inspect
import subprocess
import sys
import types
import warnings

import pytest
import transformers
from transformers import Trainer, TrainingArguments
from transformers.training_args import OptimizerNames

from adabalance_hf.integrations.transformers import _private_api, registration
from adabalance_hf.names import adabalance_optimizer_names


@pytest.mark.parametrize("name", list(_private_api.PRIVATE_TRAINER_METHODS))
def test_private_trainer_method_exists_with_the_parameters_used(name):
    method = getattr(Trainer, name, None)
    assert method is not None, f"transformers {transformers.__version__}: Trainer.{name} is gone"
    parameters = [p for p in inspect.signature(method).parameters if p != "self"]
    expected = list(_private_api.PRIVATE_TRAINER_METHODS[name])
    assert parameters[: len(expected)] == expected, (transformers.__version__, name, parameters)


def test_every_overridden_private_trainer_method_is_listed():
    from adabalance_hf.checkpoint import AtomicCheckpointsMixin
    from adabalance_hf.integrations.transformers import AdaBalanceTrainer

    overridden = {
        name
        for cls in (AtomicCheckpointsMixin, AdaBalanceTrainer)
        for name in vars(cls)
        if name.startswith("_") and not name.startswith("__") and hasattr(Trainer, name)
    }
    assert overridden <= set(_private_api.PRIVATE_TRAINER_METHODS)


def test_the_registration_surface_is_there():
    """Every private name registration.py reaches, in this environment's transformers."""
    for table in ("_member_names_", "_member_map_", "_value2member_map_"):
        assert table in vars(OptimizerNames), (transformers.__version__, table)
    if transformers.__version__.startswith("4."):
        static = inspect.getattr_static(Trainer, "get_optimizer_cls_and_kwargs")
        assert isinstance(static, staticmethod)
        assert getattr(static.__func__, "__adabalance_wrapped__", False)
    else:
        import transformers.trainer_optimizer as trainer_optimizer

        handlers = _private_api.optimizer_handlers(trainer_optimizer)
        assert all(
            handlers[name] is registration.get_adabalance for name in adabalance_optimizer_names()
        )
    assert getattr(TrainingArguments.__post_init__, "__adabalance_wrapped__", False)


def test_other_private_names_exist():
    from transformers.trainer import TRAINER_STATE_NAME

    assert TRAINER_STATE_NAME == "trainer_state.json"
    # Trainer.get_decay_parameter_names reads nothing from self (called unbound with None).
    assert "self." not in inspect.getsource(Trainer.get_decay_parameter_names).split('"""')[-1]


class Colour(str, enum.Enum):
    RED = "red"


def test_add_enum_member_behaves_like_a_declared_member():
    member = _private_api.add_enum_member(Colour, "BLUE", "blue")
    assert Colour("blue") is member is Colour.BLUE is Colour["BLUE"]
    assert [m.value for m in Colour] == ["red", "blue"] and len(Colour) == 2
    assert member == "blue" and {member: 1}["blue"] == 1 and member.name == "BLUE"
    assert _private_api.add_enum_member(Colour, "BLUE", "blue") is member  # idempotent
    with pytest.raises(ValueError):
        Colour("green")


def test_a_changed_transformers_gives_one_warning_naming_the_version_and_the_ways_that_work():
    broken_enum = types.SimpleNamespace(OptimizerNames=type("E", (), {}), TrainingArguments=object)
    broken_handlers = types.ModuleType("transformers.trainer_optimizer")
    registration._warn_unavailable.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registration.register_names(broken_enum)
        registration.register_handler(broken_handlers)
        registration.register_handler(broken_handlers)  # the same reason again: no new warning
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 2, messages  # one per distinct missing piece
    for message in messages:
        assert f"transformers {transformers.__version__}" in message
        assert "optimizer_cls_and_kwargs" in message and "AdaBalanceTrainer" in message
    assert "_member_names_" in messages[0] and "_OPTIMIZER_HANDLERS" in messages[1]


@pytest.mark.slow
def test_import_does_not_fail_when_transformers_internals_changed(tmp_path):
    """A transformers without the handler table: import works, names unavailable, one warning."""
    script = """
import warnings
warnings.simplefilter("always")
import transformers
if transformers.__version__.startswith("4."):  # no table: the static method is the surface
    import transformers.trainer as t
    t.Trainer.get_optimizer_cls_and_kwargs = lambda self, args, model=None: None
else:
    import transformers.trainer_optimizer as t
    del t._OPTIMIZER_HANDLERS
import adabalance_hf
from transformers import TrainingArguments
print("IMPORTED", adabalance_hf.__version__)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORTED" in done.stdout
    assert done.stderr.count("are not available with transformers") == 1, done.stderr[-3000:]
