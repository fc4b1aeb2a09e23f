"""Fixtures shared by the test files, and the suite's thread count.

Builders that spawned worker processes also need stay plain functions in ``_hf_helpers.py``,
``_glue_fixtures.py`` and ``_dist_helpers.py``; this file wraps them as fixtures.

The tests run torch on one thread (and so do the processes they start), unless
``OMP_NUM_THREADS`` says otherwise: their tensors are tiny, and on a 2-core machine that other
work shares (CI runs the floor environment's tests beside the main suite) a second OpenMP thread
spins waiting for a busy core. Measured on such a machine with two other processes running: a
per-tensor AdaBalance step over 1.6M parameters took 1.7 s with 2 threads and 8 ms with one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from _dist_helpers import LAUNCH_VARS
from _glue_fixtures import reset_accelerate, save_tiny_glue_model, write_sentiment_tsvs

if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"  # the processes the tests start
    torch.set_num_threads(1)  # this one: torch read the variable before this file ran


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """``monkeypatch`` with every launcher variable removed from the environment."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="session")
def sentiment_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny SST-2-style ``train.tsv`` (48 rows) and ``dev.tsv`` (20 rows)."""
    return write_sentiment_tsvs(tmp_path_factory.mktemp("glue_data") / "SST-2")


@pytest.fixture(scope="session")
def tiny_glue_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(**options)``: the folder of a tiny BERT and its tokenizer, saved once per options
    (see ``_glue_fixtures.save_tiny_glue_model``)."""
    saved: dict[tuple, Path] = {}

    def make(**options: float) -> Path:
        key = tuple(sorted(options.items()))
        if key not in saved:
            folder = tmp_path_factory.mktemp("tiny_bert")
            saved[key] = save_tiny_glue_model(folder, **options)  # type: ignore[arg-type]
        return saved[key]

    return make


@pytest.fixture
def fresh_accelerate() -> Iterator[Callable[[], None]]:
    """accelerate's process-wide state (a singleton) reset before and after the test; the
    fixture's value resets it in between."""
    reset_accelerate()
    yield reset_accelerate
    reset_accelerate()
