"""The first call of a compiled step kernel: announced and timed, its failure explained.

The compiler is stubbed: what is tested is what the user is told, not torch.compile.
"""

from __future__ import annotations

import logging

import pytest
import torch

from adabalance_hf import AdaBalance


def test_a_fused_kernel_that_fails_to_compile_names_the_variant_and_the_way_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from adabalance_hf.optim import _compile, _fused

    def broken_compile(variant: tuple):
        def kernel(*args: object) -> None:
            raise RuntimeError("inductor: no working C++ compiler found")

        return kernel

    monkeypatch.setattr(_fused, "_compiled_kernel", broken_compile)
    monkeypatch.setattr(_compile, "_compiled", set())
    param = torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)
    param.grad = torch.ones_like(param)
    optimizer = AdaBalance([param], fused=True)
    with pytest.raises(RuntimeError) as raised:
        optimizer.step()
    message = str(raised.value)
    assert "torch.bfloat16 parameters with torch.bfloat16 gradients on cpu" in message
    assert "foreach=True" in message
    assert "no working C++ compiler found" in message


def test_the_first_compile_of_a_process_is_announced_and_timed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A first step that compiles for seconds must not look like a hang (stubbed compile)."""
    from adabalance_hf.optim import _compile, _fused

    calls = []

    def fake_compile(variant: tuple):
        def kernel(*args: object) -> None:
            calls.append(variant)

        return kernel

    monkeypatch.setattr(_fused, "_compiled_kernel", fake_compile)
    monkeypatch.setattr(_compile, "_compiled", set())
    param = torch.zeros(4, requires_grad=True)
    param.grad = torch.ones_like(param)
    optimizer = AdaBalance([param], fused=True)
    with caplog.at_level(logging.INFO, logger="adabalance_hf"):
        optimizer.step()
        optimizer.step()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "adabalance_hf"]
    assert len(calls) == 2 and len(said) == 2  # announced and timed once, not at every step
    assert said[0][0] == logging.WARNING  # the first compile of the process is seen by default
    assert "compiling AdaBalance(fused=True)'s step for torch.float32 on cpu" in said[0][1]
    assert "compiled in" in said[1][1] and "later processes start warm" in said[1][1]
