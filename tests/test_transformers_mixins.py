"""The mixins give any Trainer / TrainingArguments class the AdaBalance names, in either order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from _hf_helpers import args_kwargs, classification_data, inner_optimizer, tiny_bert
from transformers import HfArgumentParser, Trainer, TrainingArguments
from trl import SFTConfig

from adabalance_hf import AdaBalance
from adabalance_hf.integrations.transformers import (
    FINE_TUNING_DEFAULTS,
    AdaBalanceArgumentsMixin,
    AdaBalanceDiagnosticsCallback,
    AdaBalanceTrainer,
    AdaBalanceTrainerMixin,
    AdaBalanceTrainingArguments,
    AtomicCheckpointsMixin,
)
from adabalance_hf.integrations.transformers.optim_names import optimizer_name_value


@dataclass
class CustomArguments(TrainingArguments):
    """Another library's arguments: its own defaults and a field of its own."""

    learning_rate: float = field(default=7e-4, metadata={"help": "custom default"})
    logging_steps: float = field(default=3, metadata={"help": "custom default"})
    custom_flag: int = field(default=11, metadata={"help": "a field of its own"})


@dataclass
class MixinFirst(AdaBalanceArgumentsMixin, CustomArguments):
    pass


@dataclass
class MixinLast(CustomArguments, AdaBalanceArgumentsMixin):
    pass


@dataclass
class ClassFirst(AdaBalanceTrainingArguments, CustomArguments):
    pass


@dataclass
class ClassLast(CustomArguments, AdaBalanceTrainingArguments):
    pass


@dataclass
class OwnPostInit(MixinLast):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.seen_optim = self.optim


def _defaults(cls: type) -> dict:
    return {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(cls)
        if f.name != "optim"
    }


ORDERS = {
    "mixin_first": lambda other: (AdaBalanceArgumentsMixin, other),
    "mixin_last": lambda other: (other, AdaBalanceArgumentsMixin),
    "class_first": lambda other: (AdaBalanceTrainingArguments, other),
    "class_last": lambda other: (other, AdaBalanceTrainingArguments),
}


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize("other", [CustomArguments, SFTConfig])
def test_no_order_of_mixing_changes_the_other_class_defaults(order, other):
    mixed = dataclass(type("Mixed", ORDERS[order](other), {}))
    assert _defaults(mixed) == _defaults(other)
    assert [f.name for f in dataclasses.fields(mixed)] == [
        f.name for f in dataclasses.fields(other)
    ]
    assert mixed.__dataclass_fields__["optim"].default == optimizer_name_value(
        other.__dataclass_fields__["optim"].default
    )
    assert _defaults(OwnPostInit) == _defaults(CustomArguments)


@pytest.mark.parametrize("cls", [MixinFirst, MixinLast, ClassFirst, ClassLast, OwnPostInit])
def test_every_order_accepts_the_names_and_keeps_builtin_ones(tmp_path, cls):
    args = cls(**args_kwargs(tmp_path, optim="adabalancew", optim_args="beta3=0.95"))
    assert args.optim == "adabalancew" and args.learning_rate == 1e-2 and args.custom_flag == 11
    if cls is OwnPostInit:
        assert args.seen_optim == "adabalancew"  # the override ran inside the mixin's wrapper
    cls_, kwargs = AdaBalanceTrainer.get_optimizer_cls_and_kwargs(args)
    assert cls_ is AdaBalance and kwargs["beta3"] == 0.95 and kwargs["decoupled_weight_decay"]
    assert kwargs["gamma"] == FINE_TUNING_DEFAULTS["gamma"]
    plain = cls(**args_kwargs(tmp_path, optim="adamw_torch"))
    assert plain.optim == "adamw_torch"
    with pytest.raises(ValueError, match="'adabalanse'"):
        cls(**args_kwargs(tmp_path, optim="adabalanse"))
    args.set_optimizer("adabalance_amsbound", learning_rate=2e-3)
    assert args.optim == "adabalance_amsbound" and args.learning_rate == 2e-3
    (parsed,) = HfArgumentParser(cls).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none", "--optim", "adabalance"]
    )
    assert parsed.optim == "adabalance" and parsed.learning_rate == 7e-4


class TrainerSubclass(Trainer):
    """Another library's Trainer: its own override, which calls super() as overrides do."""

    # create_optimizer(self) in transformers 4, create_optimizer(self, model=None) in 5
    def create_optimizer(self, *args, **kwargs):
        self.created_by_subclass = True
        return super().create_optimizer(*args, **kwargs)


class NamesFirst(AdaBalanceTrainerMixin, TrainerSubclass):
    pass


class NamesLast(TrainerSubclass, AdaBalanceTrainerMixin):
    pass


class BothMixedOrders(TrainerSubclass, AtomicCheckpointsMixin, AdaBalanceTrainerMixin):
    pass


@pytest.mark.parametrize("trainer_cls", [NamesFirst, NamesLast, BothMixedOrders])
def test_trainer_mixin_builds_adabalance_in_either_order(tmp_path, trainer_cls):
    args = MixinLast(**args_kwargs(tmp_path, optim="adabalance_amsbound", max_steps=2))
    trainer = trainer_cls(model=tiny_bert(), args=args, train_dataset=classification_data())
    diagnostics = [
        cb
        for cb in trainer.callback_handler.callbacks
        if isinstance(cb, AdaBalanceDiagnosticsCallback)
    ]
    assert len(diagnostics) == 1  # __init__ ran once, whatever the order
    trainer.train()
    optimizer = inner_optimizer(trainer)
    assert type(optimizer) is AdaBalance and optimizer.param_groups[0]["amsbound"] is True
    assert trainer.created_by_subclass
    assert trainer_cls.get_optimizer_cls_and_kwargs(args)[0] is AdaBalance  # still callable
    if trainer_cls is BothMixedOrders:  # the atomic checkpoints wrapper ran too
        trainer.args.save_strategy = "steps"
        trainer._save_checkpoint(trainer.model, None)
        assert (tmp_path / "checkpoint-2" / "adabalance_manifest.json").is_file()


def test_methods_are_wrapped_once_per_call(tmp_path, monkeypatch):
    calls = []
    from adabalance_hf.integrations.transformers import trainer as trainer_module

    real = trainer_module.check_trainer_launch
    monkeypatch.setattr(
        trainer_module, "check_trainer_launch", lambda a: calls.append(a) or real(a)
    )

    class Deeper(NamesLast):
        pass

    args = MixinLast(**args_kwargs(tmp_path, optim="adabalance", max_steps=1))
    Deeper(model=tiny_bert(), args=args, train_dataset=classification_data()).train()
    assert len(calls) == 1
