"""A griffe extension: the package's torch-style docstrings (reST roles) as Markdown.

The docstrings follow torch's conventions: Google-style sections (``Args:``, ``Returns:``) that
mkdocstrings parses, plus reST markup that Markdown does not know. This extension rewrites, in
every docstring of the package before mkdocstrings renders it:

* ``:class:`X```, ``:func:``, ``:meth:``, ``:attr:``, ``:data:``, ``:mod:``, ``:exc:`` and
  ``:obj:`` into a cross-reference (``[`X`][adabalance_hf.path.X]``) when ``X`` resolves to a
  public object of the package (the strict build then fails if that object is not rendered in
  the API reference), else into inline code (private helpers, torch's methods);
* ``:math:`x``` into ``$x$`` and a ``.. math::`` block into a ``$$`` block (arithmatex);
* a paragraph ending in ``::`` and its indented literal block into a fenced code block;
* drops ``>>> # xdoctest: +SKIP`` lines (a directive for doctest runners, not for readers);

and gives a module attribute documented by ``#:`` comments above it (Sphinx's convention) that
text as its docstring.

Loaded by mkdocs.yml (``extensions: [docs/_ext/rst_docstrings.py]``); the docs site's only
Python besides ``hooks.py``.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

import griffe

ROLE = re.compile(r":(class|func|meth|attr|data|mod|exc|obj):`(~?)([^`]+)`")
MATH_ROLE = re.compile(r":math:`([^`]+)`")
XDOCTEST = re.compile(r"^[ \t]*>>> # xdoctest:.*\n", re.M)


def _lazy_tables(package: griffe.Module) -> dict[str, str]:
    """Public name -> its path, from the modules' ``_LAZY`` tables (names loaded on first use)."""
    table: dict[str, str] = {}
    for module in [package, *_modules(package)]:
        lazy = module.members.get("_LAZY")
        if lazy is None or isinstance(lazy, griffe.Alias) or lazy.value is None:
            continue
        for name, where in ast.literal_eval(str(lazy.value)).items():
            base = module.path if module.is_init_module else module.parent.path
            table[f"{module.path}.{name}"] = f"{base}{where}.{name}"
    return table


def _modules(module: griffe.Module) -> list[griffe.Module]:
    found = []
    for member in module.members.values():
        if not member.is_alias and member.is_module:
            found.append(member)
            found.extend(_modules(member))
    return found


def _objects(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_objects(member))
    return found


class RstDocstrings(griffe.Extension):
    """Rewrite reST markup in the package's docstrings into Markdown (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self.package = pkg
        self.lazy = _lazy_tables(pkg)
        for obj in _objects(pkg):
            if obj.docstring is None and obj.is_attribute:
                obj.docstring = _comment_docstring(obj)
            if obj.docstring is not None:
                obj.docstring.value = self.markdown(obj.docstring.value, obj)

    def lookup(self, path: str) -> griffe.Object | griffe.Alias | None:
        for _ in range(5):  # follow lazily exported names (adabalance_hf.AdaBalance)
            try:
                return self.package.modules_collection.get_member(path)
            except (KeyError, ValueError, griffe.AliasResolutionError):
                if path not in self.lazy:
                    return None
                path = self.lazy[path]
        return None

    def resolve(self, target: str, obj: griffe.Object) -> str | None:
        """The canonical path of ``target`` as written in ``obj``'s docstring, or None."""
        module = obj if obj.is_module else obj.module
        if target.startswith("."):
            base = module.path if module.is_init_module else module.parent.path
            dots = len(target) - len(target.lstrip("."))
            for _ in range(dots - 1):
                base = base.rsplit(".", 1)[0]
            candidates = [f"{base}.{target.lstrip('.')}"]
        else:
            head, _, rest = target.partition(".")
            candidates = [target]
            for scope in (obj, module):
                try:
                    resolved = scope.resolve(head)
                except (griffe.NameResolutionError, AttributeError):
                    continue
                candidates.insert(0, f"{resolved}.{rest}" if rest else resolved)
            if obj.is_class:
                candidates.insert(0, f"{obj.path}.{target}")
            elif obj.parent is not None and obj.parent.is_class:
                candidates.insert(0, f"{obj.parent.path}.{target}")
        for candidate in candidates:
            found = self.lookup(candidate)
            if found is None:
                continue
            paths = [found.path]
            if found.is_alias:
                try:
                    paths.append(found.final_target.path)
                except griffe.AliasResolutionError:
                    return None
            for path in paths:  # the first public path: an alias where the class is private
                if path.startswith(f"{self.package.path}.") and not any(
                    part.startswith("_") and not part.startswith("__") for part in path.split(".")
                ):
                    return path
            return None
        return None

    def role(self, match: re.Match[str], obj: griffe.Object) -> str:
        _kind, short, target = match.groups()
        shown = target.lstrip(".").rsplit(".", 1)[-1] if short else target
        path = self.resolve(target.lstrip("~"), obj)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    def markdown(self, text: str, obj: griffe.Object) -> str:
        text = XDOCTEST.sub("", text)
        text = MATH_ROLE.sub(r"$\1$", text)
        text = ROLE.sub(lambda match: self.role(match, obj), text)
        return _blocks(text)


def _comment_docstring(obj: griffe.Object) -> griffe.Docstring | None:
    """The ``#:`` comment lines right above an attribute, as its docstring."""
    if obj.lineno is None:
        return None
    lines = obj.parent.module.lines if obj.parent is not None else []
    comment: list[str] = []
    number = obj.lineno - 2  # the line above, 0-based
    while 0 <= number < len(lines) and lines[number].strip().startswith("#:"):
        comment.insert(0, lines[number].strip()[2:].strip())
        number -= 1
    if not comment:
        return None
    return griffe.Docstring("\n".join(comment), lineno=number + 2, parent=obj)


def _blocks(text: str) -> str:
    """``.. math::`` blocks into ``$$`` blocks, ``::`` literal blocks into fenced code."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        math = stripped == ".. math::"
        literal = not math and stripped.endswith("::") and not stripped.startswith("..")
        if not (math or literal):
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        j = i + 1
        block: list[str] = []
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
        ):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        if not any(b.strip() for b in block):
            out.append(line)
            i += 1
            continue
        body = textwrap.dedent("\n".join(block)).strip("\n").split("\n")
        pad = " " * indent
        if math:
            out += [f"{pad}$$", *(pad + b for b in body), f"{pad}$$", ""]
        else:
            lead = line.rstrip()[:-2].rstrip()
            if lead.strip():
                out += [lead + ":", ""]
            out += [f"{pad}```", *(pad + b if b else b for b in body), f"{pad}```", ""]
        i = j
    return "\n".join(out)
