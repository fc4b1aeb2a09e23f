"""The "With transformers" examples of the documentation (docs/transformers.md) run as written.

The ``python`` blocks run in this process (``adabalance_hf`` is imported, so the names are
registered, as ``adabalance-run`` registers them in a script's process); the ``bash`` block is
the command line of the stock ``train.py``, run through ``adabalance-run``'s code path in
``tests/test_run_launcher.py``.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from _hf_helpers import inner_optimizer

PAGE = Path(__file__).resolve().parents[1] / "docs" / "transformers.md"


def section() -> str:
    text = PAGE.read_text()
    start = text.index("<!-- section: transformers -->")
    return text[start : text.index("<!-- /section: transformers -->")]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), re.S)


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")
def test_readme_examples_run(tmp_path, monkeypatch):
    python, bash = blocks("python"), blocks("bash")
    assert len(python) == 4 and len(bash) == 1  # TRL by name, the stock train.py, two ways
    assert "adabalance_hf" not in python[1]  # the unmodified script: names from the launcher
    monkeypatch.chdir(tmp_path)
    command = shlex.split(bash[0].replace("\\\n", " "))
    assert command[:2] == ["adabalance-run", "train.py"]
    monkeypatch.setattr(sys, "argv", command[1:])
    trainers = []
    for code in python:
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(code, "docs/transformers.md", "exec"), namespace)
        trainer = namespace["trainer"]
        assert trainer.state.global_step == trainer.args.max_steps
        trainers.append(trainer)
    sft, by_name, by_object, by_cls = (inner_optimizer(t) for t in trainers)
    assert type(sft).__name__ == "AdaBalance" and sft.defaults["gamma"] == 1e-3
    assert sft.defaults["decoupled_weight_decay"] is True
    assert trainers[1].args.optim == "adabalance" and by_name.defaults["amsbound"] is True
    assert [g["weight_decay"] for g in by_name.param_groups] == [0.01, 0.0]
    assert type(by_object).__name__ == type(by_cls).__name__ == "AdaBalance"
    assert (tmp_path / "out-object" / "checkpoint-5" / "optimizer.pt").is_file()
    assert any("adabalance/frac_between" in e for e in trainers[2].state.log_history)


def test_section_opens_with_the_defaults_the_names_use():
    from adabalance_hf import FINE_TUNING_DEFAULTS, PAPER_OPTIM_ARGS

    opening = section().split("```")[0]
    stated = opening.split("**`")[1].split("`**")[0]  # final_lr=0.1, gamma=1e-4, beta3=0.9
    pairs = dict(pair.split("=") for pair in stated.split(", "))
    assert {key: float(value) for key, value in pairs.items()} == FINE_TUNING_DEFAULTS
    assert f'optim_args="{PAPER_OPTIM_ARGS}"' in opening
