"""The AdaBalance optimizer names in transformers' stock arguments classes (no training here).

``import adabalance_hf`` registers the names: ``TrainingArguments``, ``Seq2SeqTrainingArguments``,
a subclass with its own defaults, ``set_optimizer``, ``HfArgumentParser`` (command line, JSON,
YAML) take them, ``Trainer.get_optimizer_cls_and_kwargs`` builds AdaBalance for them, and a bad
option raises ``OptimizerOptionError`` naming the flag when the arguments are created.
The same mistakes on a command line or in a config file: tests/test_bad_input_integrations.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
from _hf_helpers import make_args
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, Trainer, TrainingArguments
from transformers.training_args import OptimizerNames

from adabalance_hf import (
    FINE_TUNING_DEFAULTS,
    PAPER_OPTIM_ARGS,
    AdaBalance,
    AdaBalance4bit,
    AdaBalance8bit,
    AdaBalanceTrainer,
    adabalance_optimizer_kwargs,
    adabalance_optimizer_names,
)
from adabalance_hf import names as names_module
from adabalance_hf.integrations.transformers import OptimizerOptionError
from adabalance_hf.optim_args import optim_args_keys, parse_optim_args

ARGS_CLASSES = [TrainingArguments, Seq2SeqTrainingArguments]
# Every name: its optimizer class and the keyword arguments of its variant.
VARIANTS = {
    "adabalance": (AdaBalance, {}),
    "adabalance_amsbound": (AdaBalance, {"amsbound": True}),
    "adabalancew": (AdaBalance, {"decoupled_weight_decay": True}),
    "adabalancew_amsbound": (AdaBalance, {"decoupled_weight_decay": True, "amsbound": True}),
    "adabalance_fused": (AdaBalance, {"fused": True}),
    "adabalancew_fused": (AdaBalance, {"decoupled_weight_decay": True, "fused": True}),
    "adabalance_8bit": (AdaBalance8bit, {}),
    "adabalancew_8bit": (AdaBalance8bit, {"decoupled_weight_decay": True}),
    "adabalance_4bit": (AdaBalance4bit, {}),
    "adabalancew_4bit": (AdaBalance4bit, {"decoupled_weight_decay": True}),
}
FULL_OPTIM_ARGS = "final_lr=0.05,gamma=1e-3,beta3=0.999,amsbound=true,decoupled_weight_decay=true"


def class_default(key: str, cls: type = AdaBalance):
    return inspect.signature(cls).parameters[key].default


# ---- names -------------------------------------------------------------------------------------


def test_names_registry_and_a_variant_the_class_cannot_take(monkeypatch):
    assert adabalance_optimizer_names() == tuple(VARIANTS)
    # A future variant is listed only once AdaBalance accepts its keyword.
    monkeypatch.setitem(names_module._VARIANTS, "adabalance_future", {"future_option": True})
    assert "adabalance_future" not in adabalance_optimizer_names()
    monkeypatch.setitem(names_module._VARIANTS, "adabalance_maximize", {"maximize": True})
    assert "adabalance_maximize" in adabalance_optimizer_names()


@pytest.mark.parametrize("name", adabalance_optimizer_names())
@pytest.mark.parametrize("args_cls", ARGS_CLASSES, ids=lambda cls: cls.__name__)
def test_stock_arguments_take_every_name(tmp_path, args_cls, name):
    args = make_args(tmp_path, args_cls, optim=name, learning_rate=3e-3, weight_decay=0.01)
    assert args.optim == name and args.optim is OptimizerNames(name)
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    expected_cls, variant = VARIANTS[name]
    # The usual fields, then the fine-tuning defaults, then the name's variant.
    base = {"lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
    assert optimizer_cls is expected_cls
    assert kwargs == {**base, **FINE_TUNING_DEFAULTS, **variant}
    assert AdaBalanceTrainer.get_optimizer_cls_and_kwargs(args) == (optimizer_cls, kwargs)
    assert adabalance_optimizer_kwargs(args) == kwargs


@pytest.mark.parametrize("args_cls", ARGS_CLASSES, ids=lambda cls: cls.__name__)
def test_builtin_names_keep_working(tmp_path, args_cls):
    args = make_args(tmp_path, args_cls, optim="adamw_torch", learning_rate=3e-3)
    assert args.optim == OptimizerNames.ADAMW_TORCH
    for trainer_cls in (Trainer, AdaBalanceTrainer):
        cls, kwargs = trainer_cls.get_optimizer_cls_and_kwargs(args)
        assert cls is torch.optim.AdamW and kwargs["lr"] == 3e-3
    # The names come after transformers' own; the default is still transformers'.
    assert [m.value for m in OptimizerNames][-len(VARIANTS) :] == list(VARIANTS)
    default = args_cls(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert default.optim == args_cls.__dataclass_fields__["optim"].default
    assert default.optim not in VARIANTS


def test_unknown_name_fails_at_construction_listing_valid_names(tmp_path):
    with pytest.raises(ValueError) as error:
        make_args(tmp_path, optim="adabalanse")
    message = str(error.value)
    assert "adabalanse" in message
    for name in (*VARIANTS, "adamw_torch"):
        assert f"'{name}'" in message


@dataclass
class CustomArguments(TrainingArguments):
    """Another library's arguments: its own defaults, a field and a __post_init__ of its own."""

    learning_rate: float = field(default=7e-4, metadata={"help": "custom default"})
    logging_steps: float = field(default=3, metadata={"help": "custom default"})
    custom_flag: int = field(default=11, metadata={"help": "a field of its own"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.seen_optim = self.optim


def test_a_subclass_with_its_own_defaults_keeps_them_and_takes_the_names(tmp_path):
    base = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    args = CustomArguments(**base, optim="adabalancew", optim_args="beta3=0.95")
    assert (args.learning_rate, args.logging_steps, args.custom_flag) == (7e-4, 3, 11)
    assert args.seen_optim == "adabalancew"
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is AdaBalance and kwargs["lr"] == 7e-4 and kwargs["beta3"] == 0.95
    assert kwargs["decoupled_weight_decay"] is True
    assert kwargs["gamma"] == FINE_TUNING_DEFAULTS["gamma"]
    with pytest.raises(OptimizerOptionError, match="--optim_args 'beta3=2'"):
        CustomArguments(**base, optim="adabalancew", optim_args="beta3=2")
    (parsed,) = HfArgumentParser(CustomArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none", "--optim", "adabalance"]
    )
    assert parsed.optim == "adabalance" and parsed.learning_rate == 7e-4
    assert parsed.custom_flag == 11


# ---- kwargs from the arguments -----------------------------------------------------------------


def test_name_usual_fields_and_optim_args_reach_the_optimizer(tmp_path):
    fields = dict(learning_rate=3e-3, adam_beta1=0.8, adam_beta2=0.99, adam_epsilon=1e-7)
    args = make_args(
        tmp_path, optim="adabalance", weight_decay=0.01, optim_args=FULL_OPTIM_ARGS, **fields
    )
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is AdaBalance
    assert kwargs == {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.01,
                      "final_lr": 0.05, "gamma": 1e-3, "beta3": 0.999, "amsbound": True,
                      "decoupled_weight_decay": True}  # fmt: skip
    assert type(kwargs["amsbound"]) is bool and type(kwargs["final_lr"]) is float


@pytest.mark.parametrize(
    ("optim", "optim_args", "expected"),
    [
        ("adabalance", None, {"amsbound": False, "decoupled_weight_decay": False}),
        ("adabalance_amsbound", None, {"amsbound": True}),
        ("adabalancew", None, {"decoupled_weight_decay": True, "amsbound": False}),
        ("adabalancew_amsbound", None, {"decoupled_weight_decay": True, "amsbound": True}),
        ("adabalance", "amsbound=true", {"amsbound": True}),
        ("adabalance_amsbound", "amsbound=true", {"amsbound": True}),
        ("adabalance", "final_lr=0.02,gamma=0,beta3=0.95", {"final_lr": 0.02, "gamma": 0.0}),
        ("adabalance_8bit", "block_size=64", {"block_size": 64}),
    ],
)
def test_variants_and_optim_args(tmp_path, optim, optim_args, expected):
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(
        make_args(tmp_path, optim=optim, optim_args=optim_args)
    )
    for key, value in expected.items():
        got = kwargs.get(key, class_default(key, cls))
        assert got == value and type(got) is type(value), key


def test_the_fine_tuning_defaults_are_not_the_paper_defaults(tmp_path):
    # Not the AdaBalance class's (the paper's) defaults: those do not learn a short fine-tune.
    assert FINE_TUNING_DEFAULTS == {"final_lr": 0.1, "gamma": 1e-4, "beta3": 0.9}
    assert (class_default("gamma"), class_default("beta3")) == (1e-3, 0.999)
    args = make_args(tmp_path, optim="adabalance", optim_args=PAPER_OPTIM_ARGS)
    _, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    for key in ("final_lr", "gamma", "beta3"):
        assert kwargs[key] == class_default(key)


def test_kwargs_helper_with_stock_arguments(tmp_path):
    args = make_args(tmp_path, learning_rate=3e-3, adam_beta1=0.8, weight_decay=0.1)
    assert adabalance_optimizer_kwargs(args, final_lr=0.05) == {
        "lr": 3e-3,
        "betas": (0.8, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.1,
        **FINE_TUNING_DEFAULTS,
        "final_lr": 0.05,
    }
    # Another optimizer's optim_args are that optimizer's: neither read nor checked.
    other = make_args(tmp_path, optim="adamw_torch", optim_args="beta3=0.5,gamma=abc")
    assert adabalance_optimizer_kwargs(other)["beta3"] == FINE_TUNING_DEFAULTS["beta3"]
    with pytest.raises(ValueError, match="finall_lr") as error:
        adabalance_optimizer_kwargs(args, finall_lr=0.05)
    assert "final_lr" in str(error.value) and "gamma" in str(error.value)


def test_parse_optim_args_types():
    parsed = parse_optim_args(" final_lr = 0.05 , amsbound=TRUE, maximize=0, foreach=none ,")
    assert parsed == {"final_lr": 0.05, "amsbound": True, "maximize": False, "foreach": None}
    assert parse_optim_args(None) == {} and parse_optim_args("") == {}
    assert parse_optim_args("block_size=64", AdaBalance8bit) == {"block_size": 64}
    assert "block_size" in optim_args_keys(AdaBalance8bit)
    assert "block_size" not in optim_args_keys(AdaBalance)


def test_fused_names_select_the_fused_path(tmp_path):
    for optim, decoupled in (("adabalance_fused", False), ("adabalancew_fused", True)):
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(make_args(tmp_path, optim=optim))
        assert cls is AdaBalance and kwargs["fused"] is True
        assert kwargs.get("decoupled_weight_decay", False) is decoupled


def test_fused_name_with_foreach_fails_at_construction(tmp_path):
    with pytest.raises(OptimizerOptionError, match="--optim_args 'foreach=true'"):
        make_args(tmp_path, optim="adabalance_fused", optim_args="foreach=true")


# ---- bad options: OptimizerOptionError naming the flag, the value and the fix ------------------


@pytest.mark.parametrize(
    ("optim_args", "words"),
    [
        ("final_lr=0.05,foo=1", ["unknown key 'foo'", "final_lr", "gamma", "beta3", "amsbound"]),
        ("final_lr=abc", ["final_lr='abc'", "finite float", "final_lr=0.05"]),
        ("gamma=nan", ["gamma='nan'", "float"]),
        ("amsbound=maybe", ["amsbound='maybe'", "bool", "amsbound=true"]),
        ("final_lr", ["'final_lr'", "key=value"]),
        ("eps=1e-6", ["'eps'", "adam_epsilon", "remove eps=1e-6"]),
        ("lr=0.1", ["'lr'", "learning_rate"]),
        ("gamma=1e-3,gamma=2e-3", ["gamma", "more than once"]),
        ("block_size=64", ["unknown key 'block_size'", "optim=adabalance_8bit"]),
        ("final_lr=-1", ["final_lr must lie in [0.0, inf)"]),
        ("gamma=-1.5", ["gamma must lie in [0.0, 1.0)"]),
        ("beta3=1.5", ["beta3 must lie in [0.0, 1.0)"]),
    ],
)
def test_bad_optim_args_fail_at_construction_naming_the_flag(tmp_path, optim_args, words):
    with pytest.raises(OptimizerOptionError) as error:
        make_args(tmp_path, optim="adabalancew", optim_args=optim_args)
    message = str(error.value)
    assert message.startswith(f"--optim_args {optim_args!r} (with --optim adabalancew): ")
    for word in words:
        assert word in message
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize(
    ("field_name", "value", "words"),
    [
        ("learning_rate", -1e-3, ["): must lie in [0.0, inf)"]),
        ("adam_beta1", 1.5, ["): must lie in [0.0, 1.0)"]),
        ("adam_beta2", 1.0, ["): must lie in [0.0, 1.0)"]),
        ("adam_epsilon", -1.0, ["): must lie in [0.0, inf)"]),
        ("weight_decay", -1.0, ["): must lie in [0.0, inf)"]),
    ],
)
def test_out_of_range_field_names_the_flag(tmp_path, field_name, value, words):
    with pytest.raises(OptimizerOptionError) as error:
        make_args(tmp_path, optim="adabalancew", **{field_name: value})
    message = str(error.value)
    assert message.startswith(f"--{field_name} {value} (with --optim adabalancew): ")
    for word in words:
        assert word in message
    make_args(tmp_path, optim="adamw_torch", **{field_name: value})  # not AdaBalance's to check


@pytest.mark.parametrize(
    ("optim", "optim_args", "key"),
    [("adabalance_amsbound", "amsbound=false", "amsbound"),
     ("adabalancew", "decoupled_weight_decay=false", "decoupled_weight_decay")],
)  # fmt: skip
def test_optim_args_contradicting_the_name_is_an_error(tmp_path, optim, optim_args, key):
    with pytest.raises(OptimizerOptionError) as error:
        make_args(tmp_path, optim=optim, optim_args=optim_args)
    message = str(error.value)
    assert message.startswith(f"--optim_args {optim_args!r} (with --optim {optim}): ")
    assert f"it sets {key}=False but optim='{optim}'" in message
    assert f"drop {key} from optim_args" in message


# ---- set_optimizer, serialisation and the command line -----------------------------------------


def test_set_optimizer_takes_the_names(tmp_path):
    args = make_args(tmp_path)
    args.set_optimizer(
        name="adabalance", learning_rate=2e-3, beta1=0.8, weight_decay=0.01, args="final_lr=0.03"
    )
    assert args.optim == "adabalance"
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is AdaBalance and kwargs["lr"] == 2e-3 and kwargs["final_lr"] == 0.03
    assert kwargs["betas"][0] == 0.8 and kwargs["weight_decay"] == 0.01
    args.set_optimizer(name="adabalance_amsbound")
    assert Trainer.get_optimizer_cls_and_kwargs(args)[1]["amsbound"] is True
    args.set_optimizer("sgd", learning_rate=1e-1)
    assert args.optim == OptimizerNames.SGD
    with pytest.raises(ValueError, match="nope"):
        args.set_optimizer("nope")


def test_set_optimizer_checks_the_options(tmp_path):
    with pytest.raises(OptimizerOptionError, match="gamma='abc'"):
        make_args(tmp_path).set_optimizer(name="adabalance", args="gamma=abc")


@pytest.mark.parametrize("optim", ["adabalancew_8bit", "adamw_torch"])
def test_to_dict_and_a_json_round_trip(tmp_path, optim):
    optim_args = None if optim == "adamw_torch" else "block_size=64,final_lr=0.05"
    args = make_args(tmp_path, optim=optim, optim_args=optim_args)
    as_dict = args.to_dict()
    assert as_dict["optim"] == optim and type(as_dict["optim"]) is str
    assert json.loads(args.to_json_string())["optim"] == optim
    config = tmp_path / "args.json"
    config.write_text(args.to_json_string())
    (parsed,) = HfArgumentParser(TrainingArguments).parse_json_file(str(config))
    assert parsed.to_dict() == as_dict
    built = Trainer.get_optimizer_cls_and_kwargs(parsed)
    assert built == Trainer.get_optimizer_cls_and_kwargs(args)
    if optim != "adamw_torch":
        assert built[0] is AdaBalance8bit and built[1]["block_size"] == 64
    replaced = dataclasses.replace(args, learning_rate=5e-4)
    assert replaced.optim == args.optim
    assert Trainer.get_optimizer_cls_and_kwargs(replaced)[1]["lr"] == 5e-4


def test_yaml_config(tmp_path):
    config = tmp_path / "args.yaml"
    config.write_text(
        f"output_dir: {tmp_path}\nreport_to: none\nuse_cpu: true\noptim: adabalancew_amsbound\n"
        "learning_rate: 2.0e-3\noptim_args: final_lr=0.05,gamma=1.0e-3\n"
    )
    (args,) = HfArgumentParser(TrainingArguments).parse_yaml_file(str(config))
    assert args.optim == "adabalancew_amsbound"
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is AdaBalance and kwargs["lr"] == 2e-3
    assert (kwargs["final_lr"], kwargs["gamma"], kwargs["amsbound"]) == (0.05, 1e-3, True)
    assert kwargs["decoupled_weight_decay"] is True


@pytest.mark.parametrize("args_cls", ARGS_CLASSES, ids=lambda cls: cls.__name__)
def test_command_line(tmp_path, args_cls):
    parser = HfArgumentParser(args_cls)
    base = ["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu"]
    (args,) = parser.parse_args_into_dataclasses(
        [*base, "--optim", "adabalancew_8bit", "--learning_rate", "2e-3",
         "--optim_args", "block_size=64,final_lr=0.1"]
    )  # fmt: skip
    assert type(args) is args_cls and args.optim == "adabalancew_8bit"
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is AdaBalance8bit and kwargs["lr"] == 2e-3
    assert kwargs["block_size"] == 64 and type(kwargs["block_size"]) is int
    assert kwargs["final_lr"] == 0.1 and kwargs["decoupled_weight_decay"] is True
    (builtin,) = parser.parse_args_into_dataclasses([*base, "--optim", "adamw_torch"])
    assert builtin.optim == OptimizerNames.ADAMW_TORCH
    with pytest.raises(OptimizerOptionError, match=r"--optim_args 'block_size=0' \(with"):
        parser.parse_args_into_dataclasses(
            [*base, "--optim", "adabalance_8bit", "--optim_args", "block_size=0"]
        )


def test_help_lists_the_names():
    help_text = HfArgumentParser(TrainingArguments).format_help()
    for name in (*VARIANTS, "adamw_torch", "adamw_torch_fused"):
        assert name in help_text
    assert "--optim_args" in help_text


CHECK = (
    "from transformers import Trainer, TrainingArguments; "
    "from adabalance_hf import AdaBalance, AdaBalanceTrainer; "
    "args = TrainingArguments(output_dir='out', optim='adabalancew', use_cpu=True); "
    "assert Trainer.get_optimizer_cls_and_kwargs(args)[0] is AdaBalance; "
    "assert issubclass(AdaBalanceTrainer, Trainer)"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "first",
    [
        "import sys, adabalance_hf; assert 'transformers' not in sys.modules",
        "import transformers.trainer; import adabalance_hf",
    ],
    ids=["package_first", "transformers_first"],
)
def test_importing_the_package_registers_the_names_without_importing_transformers(tmp_path, first):
    subprocess.run([sys.executable, "-c", f"{first}; {CHECK}"], check=True, cwd=tmp_path)
