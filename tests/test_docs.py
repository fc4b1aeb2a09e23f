"""The README and the documentation (``docs/``) say what is true: their code runs.

Every ``python`` block of ``README.md`` and ``docs/**/*.md`` runs here, in a fresh namespace and
a temporary working directory. A comment on the line before a block changes that, visibly in
the Markdown (see docs/development.md):

* ``<!-- docs-test: skip: REASON -->``: not run (a GPU, a download, a process group); the
  reason is required and shows as the test's skip reason;
* ``<!-- docs-test: run-by tests/FILE.py -->``: run, with assertions of its own, by that file,
  which must name the page;
* ``<!-- docs-test: continue -->``: run in the namespace of the page's previous block.

Other languages (``bash``, ``text``) are not run. The README's first two commands are the main
job and the test command CI runs, and the pages name no release of another package that CI does
not test.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]

MAIN_JOB = (
    'pip install torch==2.13.0 && pip install -e ".[recipes]" && accelerate launch recipes/glue.py'
)
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q'
README_MAX_LINES = 250

OPEN = re.compile(r"^(\s*)```(\w*)\s*$")
MARKER = re.compile(r"^\s*<!-- docs-test: (?P<kind>skip|run-by|continue)(?P<rest>.*?)-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the block's first code line
    language: str
    code: str
    marker: str | None  # skip / run-by / continue
    argument: str  # the skip reason or the run-by file

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, with the docs-test comment on the line before each."""
    lines = page.read_text().split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"{page.name}:{i + 1}: a code block that is never closed"
        code = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        kind = argument = None
        if marker:
            kind, argument = marker["kind"], marker["rest"].strip().removeprefix(":").strip()
        else:
            assert i == 0 or "docs-test" not in lines[i - 1], (
                f"{page.name}:{i}: malformed docs-test comment: {lines[i - 1]!r}"
            )
        found.append(Block(page, i + 2, language, code, kind, argument or ""))
        i = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
PYTHON = [block for block in ALL_BLOCKS if block.language == "python"]


def chains() -> list[list[Block]]:
    """The python blocks to run here: each with the ``continue`` blocks that follow it."""
    result: list[list[Block]] = []
    for block in PYTHON:
        if block.marker == "continue":
            assert result and result[-1][0].page == block.page, (
                f"{block.name}: 'continue' with no earlier block on the page"
            )
            result[-1].append(block)
        elif block.marker != "run-by":
            result.append([block])
    return result


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")
@pytest.mark.parametrize("chain", chains(), ids=lambda chain: chain[0].name)
def test_python_block_runs(chain: list[Block], tmp_path, monkeypatch):
    first = chain[0]
    if first.marker == "skip":
        assert first.argument, f"{first.name}: a skipped block must say why"
        pytest.skip(f"{first.name}: {first.argument}")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in chain:
        # Leading newlines put a traceback's line numbers on the page's own lines.
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(block.page), "exec"), namespace)


def test_markers_are_well_formed():
    for block in ALL_BLOCKS:
        if block.marker is None:
            continue
        assert block.language == "python", f"{block.name}: docs-test comments are for python"
        if block.marker == "skip":
            assert len(block.argument) > 10, f"{block.name}: say why the block cannot run"
        if block.marker == "run-by":
            runner = ROOT / block.argument
            assert runner.is_file(), f"{block.name}: no test file {block.argument}"
            page = str(block.page.relative_to(ROOT))
            assert page in runner.read_text(), f"{block.argument} does not read {page}"


def test_readme_starts_with_the_main_job_and_the_test_command():
    commands = [block for block in blocks(README) if block.language == "bash"][:2]
    first_blocks = blocks(README)[:2]
    assert first_blocks == commands, "the README's first two blocks are its two commands"
    assert [block.code.strip() for block in commands] == [MAIN_JOB, TEST_COMMAND]
    # .ci/run runs the README's test command verbatim (in a copy of the tree without ../shared)
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the pages are in docs/"


def slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {slug(heading) for heading in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_links_resolve():
    """mkdocs checks the pages' links (strict); the README is not one of them, so here."""
    text = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.M | re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / path) if path else README
        assert file.exists(), f"README.md links {target}, which does not exist"
        if anchor:
            assert anchor in anchors(file), f"README.md links {target}: no such heading"


def _tested_versions() -> dict[str, set[str]]:
    """Package (lower case) -> the versions CI installs (pins of .ci/ and of .ci/run)."""
    ci = ROOT / ".ci"
    pins = "\n".join(
        (ci / name).read_text()
        for name in ("newest-requirements.txt", "floor-requirements.txt", "run")
    )
    versions: dict[str, set[str]] = {}
    for name, version in re.findall(r"([A-Za-z_.-]+)==([0-9][0-9.]*[0-9])", pins):
        parts = version.split(".")
        versions.setdefault(name.lower(), set()).update(
            ".".join(parts[:n]) for n in range(2, len(parts) + 1)
        )
    return versions


PACKAGE_VERSION = re.compile(
    r"\b(transformers|accelerate|datasets|trl|peft|torch|deepspeed|torchao|bitsandbytes)"
    r"(?:==|>=|<=| )v?(\d+\.\d+(?:\.\d+)?)",
    re.I,
)


def test_pages_name_only_versions_that_ci_tests():
    tested = _tested_versions()
    for page in PAGES:
        for package, version in PACKAGE_VERSION.findall(page.read_text()):
            assert version in tested.get(package.lower(), set()), (
                f"{page.relative_to(ROOT)} names {package} {version}, which CI does not test "
                f"(.ci/newest-requirements.txt, .ci/floor-requirements.txt, .ci/run)"
            )
