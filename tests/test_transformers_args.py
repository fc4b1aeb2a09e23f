"""Optimizer names, optim_args parsing and AdaBalanceTrainingArguments (no training here)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import pytest
import torch
from _hf_helpers import make_args
from transformers import HfArgumentParser, TrainingArguments
from transformers.training_args import OptimizerNames

from adabalance_hf import AdaBalance
from adabalance_hf.integrations.transformers import (
    FINE_TUNING_DEFAULTS,
    PAPER_OPTIM_ARGS,
    AdaBalanceTrainer,
    AdaBalanceTrainingArguments,
    adabalance_optimizer_kwargs,
    adabalance_optimizer_names,
    optim_args_keys,
    parse_optim_args,
)

FULL_OPTIM_ARGS = "final_lr=0.05,gamma=1e-3,beta3=0.999,amsbound=true,decoupled_weight_decay=true"


def ab_args(tmp_path, **overrides):
    return make_args(tmp_path, AdaBalanceTrainingArguments, **overrides)


# ---- names -------------------------------------------------------------------------------------


def test_names_registry_offers_variants_and_fused_only_when_supported():
    names = adabalance_optimizer_names()
    assert {"adabalance", "adabalance_amsbound", "adabalancew", "adabalancew_amsbound"} <= set(
        names
    )
    assert {"adabalance_fused", "adabalancew_fused"} <= set(names)

    class WithFused(AdaBalance):
        def __init__(self, params, lr=1e-3, *, fused=None):
            super().__init__(params, lr=lr)

    assert "adabalance_fused" in adabalance_optimizer_names(WithFused)
    assert "fused" in optim_args_keys(WithFused)


def test_fused_names_select_the_fused_path(tmp_path):
    for optim, decoupled in (("adabalance_fused", False), ("adabalancew_fused", True)):
        cls, kwargs = AdaBalanceTrainer.get_optimizer_cls_and_kwargs(ab_args(tmp_path, optim=optim))
        assert cls is AdaBalance and kwargs["fused"] is True
        assert kwargs.get("decoupled_weight_decay", False) is decoupled
    with pytest.raises(ValueError, match="foreach") as error:
        ab_args(tmp_path, optim="adabalance_fused", optim_args="foreach=true")
    assert "optim='adabalance_fused'" in str(error.value)


def test_unknown_name_fails_at_construction_listing_valid_names(tmp_path):
    with pytest.raises(ValueError) as error:
        ab_args(tmp_path, optim="adabalanse")
    message = str(error.value)
    assert "'adabalanse'" in message
    for name in ("adabalance", "adabalance_amsbound", "adabalancew", "adamw_torch"):
        assert name in message


def test_builtin_names_keep_working(tmp_path):
    args = ab_args(tmp_path, optim="adamw_torch", learning_rate=3e-3)
    assert args.optim == OptimizerNames.ADAMW_TORCH
    cls, kwargs = AdaBalanceTrainer.get_optimizer_cls_and_kwargs(args)
    assert cls is torch.optim.AdamW
    assert kwargs["lr"] == 3e-3
    default = AdaBalanceTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    stock = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert default.optim == stock.optim


# ---- kwargs from the arguments -----------------------------------------------------------------


def test_name_and_usual_fields_and_optim_args_reach_the_optimizer(tmp_path):
    args = ab_args(
        tmp_path,
        optim="adabalance",
        learning_rate=3e-3,
        adam_beta1=0.8,
        adam_beta2=0.99,
        adam_epsilon=1e-7,
        weight_decay=0.01,
        optim_args=FULL_OPTIM_ARGS,
    )
    assert args.optim == "adabalance"
    expected = {
        "lr": 3e-3,
        "betas": (0.8, 0.99),
        "eps": 1e-7,
        "weight_decay": 0.01,
        "final_lr": 0.05,
        "gamma": 1e-3,
        "beta3": 0.999,
        "amsbound": True,
        "decoupled_weight_decay": True,
    }
    assert adabalance_optimizer_kwargs(args) == expected
    cls, kwargs = AdaBalanceTrainer.get_optimizer_cls_and_kwargs(args)
    assert cls is AdaBalance
    assert kwargs == expected
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
        (
            "adabalance",
            "final_lr=0.02,gamma=0,beta3=0.95",
            {"final_lr": 0.02, "gamma": 0.0, "beta3": 0.95},
        ),
    ],
)
def test_variants_and_optim_args(tmp_path, optim, optim_args, expected):
    kwargs = adabalance_optimizer_kwargs(ab_args(tmp_path, optim=optim, optim_args=optim_args))
    for key, value in expected.items():
        assert kwargs.get(key, inspect.signature(AdaBalance).parameters[key].default) == value


def test_every_name_without_optim_args_gets_the_fine_tuning_defaults(tmp_path):
    # Not the AdaBalance class's (the paper's) defaults: those do not learn a short fine-tune.
    assert FINE_TUNING_DEFAULTS == {"final_lr": 0.1, "gamma": 1e-4, "beta3": 0.9}
    paper = {
        key: inspect.signature(AdaBalance).parameters[key].default for key in ("gamma", "beta3")
    }
    assert paper == {"gamma": 1e-3, "beta3": 0.999}
    for name in adabalance_optimizer_names():
        kwargs = adabalance_optimizer_kwargs(ab_args(tmp_path, optim=name))
        assert {key: kwargs[key] for key in FINE_TUNING_DEFAULTS} == FINE_TUNING_DEFAULTS, name
        _, trainer_kwargs = AdaBalanceTrainer.get_optimizer_cls_and_kwargs(
            ab_args(tmp_path, optim=name)
        )
        assert trainer_kwargs == kwargs


def test_paper_optim_args_give_the_class_defaults(tmp_path):
    kwargs = adabalance_optimizer_kwargs(
        ab_args(tmp_path, optim="adabalance", optim_args=PAPER_OPTIM_ARGS)
    )
    for key in ("final_lr", "gamma", "beta3"):
        assert kwargs[key] == inspect.signature(AdaBalance).parameters[key].default


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"optim": "adabalance_amsbound", "optim_args": "amsbound=false"}, ["amsbound", "optim="]),
        ({"optim": "adabalancew", "optim_args": "decoupled_weight_decay=false"}, ["decoupled"]),
    ],
)
def test_optim_args_contradicting_the_name_is_an_error(tmp_path, overrides, words):
    with pytest.raises(ValueError, match="optim_args sets") as error:
        ab_args(tmp_path, **overrides)
    for word in words:
        assert word in str(error.value)


def test_options_have_one_place_optim_args(tmp_path):
    # transformers' convention: optim + optim_args; no second set of --adabalance_* fields.
    names = {field.name for field in dataclasses.fields(AdaBalanceTrainingArguments)}
    stock = {field.name for field in dataclasses.fields(TrainingArguments)}
    assert names == stock
    with pytest.raises(TypeError, match="adabalance_final_lr"):
        AdaBalanceTrainingArguments(output_dir=str(tmp_path), adabalance_final_lr=0.1)


@pytest.mark.parametrize(
    ("optim_args", "words"),
    [
        ("final_lr=0.05,foo=1", ["'foo'", "final_lr", "gamma", "beta3", "amsbound"]),
        ("final_lr=abc", ["final_lr", "'abc'", "float"]),
        ("gamma=nan", ["gamma", "float"]),
        ("amsbound=maybe", ["amsbound", "'maybe'", "bool", "true"]),
        ("final_lr", ["'final_lr'", "key=value"]),
        ("eps=1e-6", ["eps", "adam_epsilon"]),
        ("lr=0.1", ["lr", "learning_rate"]),
        ("gamma=1e-3,gamma=2e-3", ["gamma", "more than once"]),
    ],
)
def test_bad_optim_args_fail_at_construction(tmp_path, optim_args, words):
    with pytest.raises(ValueError) as error:
        ab_args(tmp_path, optim="adabalance", optim_args=optim_args)
    for word in words:
        assert word in str(error.value)


def test_out_of_range_value_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="final_lr") as error:
        ab_args(tmp_path, optim="adabalance", optim_args="final_lr=-1")
    assert "optim='adabalance'" in str(error.value)
    with pytest.raises(ValueError, match="gamma"):
        ab_args(tmp_path, optim="adabalance", optim_args="gamma=-1.5")


def test_parse_optim_args_types():
    parsed = parse_optim_args(" final_lr = 0.05 , amsbound=TRUE, maximize=0, foreach=none ,")
    assert parsed == {"final_lr": 0.05, "amsbound": True, "maximize": False, "foreach": None}
    assert parse_optim_args(None) == {} and parse_optim_args("") == {}


def test_kwargs_helper_with_stock_arguments(tmp_path):
    args = make_args(tmp_path, learning_rate=3e-3, adam_beta1=0.8, weight_decay=0.1)
    kwargs = adabalance_optimizer_kwargs(args, final_lr=0.05)
    # The Trainer integration's fine-tuning defaults, then the overrides.
    assert kwargs == {
        "lr": 3e-3,
        "betas": (0.8, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.1,
        **FINE_TUNING_DEFAULTS,
        "final_lr": 0.05,
    }
    # Stock arguments' optim_args belong to their optim: not read.
    assert adabalance_optimizer_kwargs(make_args(tmp_path, optim_args="beta3=0.5"))["beta3"] == 0.9
    with pytest.raises(ValueError, match="finall_lr") as error:
        adabalance_optimizer_kwargs(args, finall_lr=0.05)
    assert "final_lr" in str(error.value) and "gamma" in str(error.value)


def test_set_optimizer_accepts_adabalance_names(tmp_path):
    args = ab_args(tmp_path)
    args.set_optimizer("adabalance_amsbound", learning_rate=2e-3, args="final_lr=0.03")
    assert args.optim == "adabalance_amsbound"
    kwargs = adabalance_optimizer_kwargs(args)
    assert kwargs["amsbound"] is True and kwargs["lr"] == 2e-3 and kwargs["final_lr"] == 0.03
    args.set_optimizer("sgd", learning_rate=1e-1)
    assert args.optim == OptimizerNames.SGD
    with pytest.raises(ValueError, match="'nope'"):
        args.set_optimizer("nope")


# ---- serialisation and the command line --------------------------------------------------------


@pytest.mark.parametrize("optim", ["adabalance_amsbound", "adamw_torch"])
def test_to_dict_and_json_round_trip(tmp_path, optim):
    args = ab_args(
        tmp_path, optim=optim, optim_args="final_lr=0.05" if optim != "adamw_torch" else None
    )
    as_dict = args.to_dict()
    assert as_dict["optim"] == optim
    rebuilt = AdaBalanceTrainingArguments(**json.loads(args.to_json_string()))
    assert rebuilt.to_dict() == as_dict
    assert adabalance_optimizer_kwargs(rebuilt) == adabalance_optimizer_kwargs(args)
    (parsed,) = HfArgumentParser(AdaBalanceTrainingArguments).parse_dict(
        json.loads(args.to_json_string())
    )
    assert parsed.to_dict() == as_dict
    replaced = dataclasses.replace(args, learning_rate=5e-4)
    assert replaced.optim == args.optim and adabalance_optimizer_kwargs(replaced)["lr"] == 5e-4


def test_command_line(tmp_path):
    parser = HfArgumentParser(AdaBalanceTrainingArguments)
    base = ["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu"]
    (args,) = parser.parse_args_into_dataclasses(
        [
            *base,
            "--optim",
            "adabalance_amsbound",
            "--learning_rate",
            "2e-3",
            "--optim_args",
            "final_lr=0.05,decoupled_weight_decay=true,gamma=2e-3,beta3=0.99",
        ]
    )
    assert args.optim == "adabalance_amsbound"
    kwargs = adabalance_optimizer_kwargs(args)
    assert kwargs["lr"] == 2e-3
    assert (kwargs["final_lr"], kwargs["gamma"], kwargs["beta3"]) == (0.05, 2e-3, 0.99)
    assert kwargs["amsbound"] is True and kwargs["decoupled_weight_decay"] is True
    (builtin,) = parser.parse_args_into_dataclasses([*base, "--optim", "adamw_torch"])
    assert builtin.optim == OptimizerNames.ADAMW_TORCH


def test_command_line_unknown_name_and_help(tmp_path, capsys):
    parser = HfArgumentParser(AdaBalanceTrainingArguments)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--optim", "adabalanse"])
    err = capsys.readouterr().err
    assert "adabalanse" in err and "'adabalance'" in err and "'adamw_torch'" in err
    help_text = parser.format_help()
    for name in (*adabalance_optimizer_names(), "adamw_torch", "adamw_torch_fused"):
        assert name in help_text
    assert "--optim_args" in help_text
    for flag in ("--adabalance_final_lr", "--adabalance_gamma", "--adabalance_amsbound"):
        assert flag not in help_text
    with pytest.raises(ValueError, match="adabalance_gamma"):
        parser.parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--optim", "adabalance", "--adabalance_gamma", "0"]
        )


def test_importing_the_package_does_not_import_transformers():
    code = (
        "import sys, adabalance_hf; assert 'transformers' not in sys.modules; "
        "from adabalance_hf import AdaBalanceTrainer, AdaBalanceTrainingArguments; "
        "import transformers; assert issubclass(AdaBalanceTrainer, transformers.Trainer)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
