"""The test suite's own layout: no test imports a private module of ``benchmarks/``.

A benchmark's private modules (``benchmarks/_*.py``) are its own to change. Code the tests and
the benchmarks both need lives in the package (``adabalance_hf._memory``) or in ``tests/``; a
test of a benchmark imports the benchmark's public script (``glue_quality``, ``step_speed``, ...)
or runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BENCHMARKS = TESTS.parent / "benchmarks"


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module name) of every absolute import in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_no_test_imports_a_private_benchmark_module() -> None:
    private = {path.stem for path in BENCHMARKS.glob("_*.py")}
    assert "_lr_grid" in private  # the check has something to find
    bad = [
        f"{path.name}:{line} imports benchmarks/{name}.py"
        for path in sorted(TESTS.glob("*.py"))
        for line, name in _imported_modules(ast.parse(path.read_text(), str(path)))
        if name in private
    ]
    assert not bad, bad
