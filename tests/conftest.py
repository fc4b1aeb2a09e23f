"""Fixtures shared by the test files.

Builders that spawned worker processes also need stay plain functions in ``_hf_helpers.py``,
``_glue_fixtures.py`` and ``_dist_helpers.py``; this file wraps them as fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _dist_helpers import LAUNCH_VARS
from _glue_fixtures import reset_accelerate, save_tiny_glue_model, write_sentiment_tsvs


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
