"""The README's "With transformers" examples run as written."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("<!-- section: transformers -->")
    return text[start : text.index("<!-- /section: transformers -->")]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), re.S)


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")
def test_readme_examples_run(tmp_path, monkeypatch):
    python, bash = blocks("python"), blocks("bash")
    assert len(python) == 4 and len(bash) == 1  # TRL, then the three ways
    monkeypatch.chdir(tmp_path)
    command = shlex.split(bash[0].replace("\\\n", " "))
    assert command[:2] == ["python", "train.py"]
    monkeypatch.setattr(sys, "argv", command[1:])
    for code in python:
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(code, "README.md", "exec"), namespace)
        trainer = namespace["trainer"]
        assert trainer.state.global_step == trainer.args.max_steps
    assert (tmp_path / "out-object" / "checkpoint-5" / "optimizer.pt").is_file()
    assert namespace["args"].optim == "adabalance"
    assert any("adabalance/frac_between" in e for e in trainer.state.log_history)


def test_section_opens_with_the_defaults_the_names_use():
    from adabalance_hf.integrations.transformers import FINE_TUNING_DEFAULTS, PAPER_OPTIM_ARGS

    opening = section().split("```")[0]
    stated = opening.split("**`")[1].split("`**")[0]  # final_lr=0.1, gamma=1e-4, beta3=0.9
    pairs = dict(pair.split("=") for pair in stated.split(", "))
    assert {key: float(value) for key, value in pairs.items()} == FINE_TUNING_DEFAULTS
    assert f'optim_args="{PAPER_OPTIM_ARGS}"' in opening
