"""Bad optimizer input through transformers: the command line, JSON/YAML configs and the Trainer.

tests/test_transformers_args.py covers unknown names and bad ``optim_args`` passed to the stock
``TrainingArguments`` directly; this file covers the same mistakes where users make them: on a
command line (``HfArgumentParser``), in a JSON or YAML config, and on arguments changed after
construction. Every one fails before training starts, naming the input (the flag) and the fix.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from _hf_helpers import make_args
from transformers import HfArgumentParser, Trainer, TrainingArguments

from adabalance_hf import AdaBalanceTrainer
from adabalance_hf.integrations.transformers import OptimizerOptionError
from adabalance_hf.optim_args import parse_optim_args


@pytest.fixture
def parser() -> HfArgumentParser:
    return HfArgumentParser(TrainingArguments)


def _cli(tmp_path, *extra: str) -> list[str]:
    return ["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu", *extra]


@pytest.mark.parametrize(
    ("extra", "flag", "words"),
    [
        (["--optim_args", "final_lr=0.05,foo=1"], "--optim_args 'final_lr=0.05,foo=1'",
         ["unknown key 'foo'", "valid keys: beta3, final_lr, gamma"]),
        (["--optim_args", "final_lr=abc"], "--optim_args 'final_lr=abc'",
         ["final_lr='abc' is not a finite float", "=0.05"]),
        (["--optim_args", "betas=0.9"], "--optim_args 'betas=0.9'",
         ["'betas'", "adam_beta1 and adam_beta2", "remove"]),
        (["--optim_args", "final_lr=0.05;gamma=0.001"], "--optim_args 'final_lr=0.05;gamma=0.001'",
         ["not a key=value pair", "comma"]),
        (["--optim_args", "fused=true,foreach=true"], "--optim_args 'fused=true,foreach=true'",
         ["foreach", "fused", "pick one"]),
        (["--adam_beta1", "1.0"], "--adam_beta1 1.0", ["): must lie in [0.0, 1.0)"]),
        (["--learning_rate", "-1"], "--learning_rate -1.0", ["): must lie in [0.0, inf)"]),
        (["--adam_epsilon", "nan"], "--adam_epsilon nan", ["): must lie in [0.0, inf)"]),
        (["--optim_args", "final_lr=inf"], "--optim_args 'final_lr=inf'",
         ["final_lr='inf' is not a finite float"]),
    ],
    ids=["unknown_key", "final_lr_abc", "betas", "semicolons", "fused_foreach", "beta1", "lr",
         "eps_nan", "final_lr_inf"],
)  # fmt: skip
def test_command_line_bad_value_is_an_error_naming_it(parser, tmp_path, extra, flag, words):
    with pytest.raises(OptimizerOptionError) as error:
        parser.parse_args_into_dataclasses(_cli(tmp_path, "--optim", "adabalance", *extra))
    message = str(error.value)
    assert message.startswith(f"{flag} (with --optim adabalance): "), message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--optim", "adabalanse"], ["'adabalanse'", "'adabalance'"]),
        (["--optim", "AdaBalance"], ["'AdaBalance'", "'adabalance'"]),
    ],
    ids=["unknown_optim", "capitalised_optim"],
)
def test_command_line_type_errors_are_usage_errors(parser, tmp_path, capsys, extra, words):
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args_into_dataclasses(_cli(tmp_path, *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_yaml_config_with_1e_3_names_the_yaml_fix(parser, tmp_path) -> None:
    # PyYAML (YAML 1.1) reads 1e-3 without a dot as the string '1e-3'.
    config = tmp_path / "args.yaml"
    config.write_text(
        f"output_dir: {tmp_path}\nreport_to: none\nuse_cpu: true\noptim: adabalancew\n"
        "learning_rate: 1e-3\n"
    )
    assert yaml.safe_load(config.read_text())["learning_rate"] == "1e-3"
    with pytest.raises(OptimizerOptionError) as error:
        parser.parse_yaml_file(str(config))
    message = str(error.value)
    assert message.startswith("--learning_rate 1e-3 (with --optim adabalancew): '1e-3' is a str")
    assert "write 1.0e-3" in message
    config.write_text(config.read_text().replace("1e-3", "1.0e-3"))
    (args,) = parser.parse_yaml_file(str(config))
    assert args.learning_rate == 1e-3


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"optim_args": "gamma=1e-3x"}, ["gamma='1e-3x' is not a finite float"]),
        ({"optim_args": {"final_lr": 0.05}}, ["must be a string", "optim_args='final_lr=0.05'"]),
        ({"optim_args": "final_lr=0.05,gama=1e-3"}, ["unknown key 'gama'", "gamma"]),
        ({"optim": "adabalance_amsgrad"}, ["adabalance_amsgrad", "'adabalance_amsbound'"]),
        ({"adabalance_gamma": 0.05}, ["adabalance_gamma"]),  # transformers' own check
    ],
    ids=["gamma_str", "optim_args_dict", "optim_args_typo", "unknown_optim", "unknown_field"],
)
def test_json_config_bad_entry_is_an_error_naming_it(parser, tmp_path, entry, words) -> None:
    config = tmp_path / "args.json"
    base = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True}
    config.write_text(json.dumps({**base, "optim": "adabalance", **entry}))
    with pytest.raises(ValueError) as error:
        parser.parse_json_file(str(config))
    for word in words:
        assert word in str(error.value)
    if "optim_args" in entry:  # AdaBalance's own check, naming the flag
        assert isinstance(error.value, OptimizerOptionError)
        assert str(error.value).startswith("--optim_args ")


def test_optim_args_of_another_type_name_the_string_form() -> None:
    with pytest.raises(ValueError, match=re.escape("optim_args='final_lr=0.05,amsbound=True'")):
        parse_optim_args({"final_lr": 0.05, "amsbound": True})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got a list"):
        parse_optim_args(["final_lr=0.05"])  # type: ignore[arg-type]


@pytest.mark.parametrize("trainer_cls", [Trainer, AdaBalanceTrainer])
def test_optim_args_changed_after_construction_fail_when_the_optimizer_is_built(
    tmp_path, trainer_cls
):
    args = make_args(tmp_path, optim="adabalance")
    args.optim_args = "final_lr=abc"  # not re-validated by the dataclass
    with pytest.raises(ValueError, match="final_lr='abc' is not a finite float"):
        trainer_cls.get_optimizer_cls_and_kwargs(args)
    args.optim_args = "final_lr=-1"  # checked as the constructor checks, before building
    with pytest.raises(ValueError, match=re.escape("final_lr: must lie in [0.0, inf)")):
        trainer_cls.get_optimizer_cls_and_kwargs(args)
