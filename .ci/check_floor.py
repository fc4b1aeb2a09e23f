"""CI helper for the floor environment (see .ci/run and .ci/floor-requirements.txt).

``python .ci/check_floor.py pins``
    Fails unless ``.ci/floor-requirements.txt`` pins exactly the lower bounds that
    ``pyproject.toml`` states: every dependency but torch, and the ``trl`` and ``peft`` extras.
    (Python 3.11+, for tomllib: CI's interpreter.)

``python .ci/check_floor.py versions LABEL [--expect FILE] [--repo DIR]``
    Prints one line with the versions this interpreter imports. ``--expect FILE``: fail unless
    they are the pins of FILE (``.ci/floor-requirements.txt`` or ``.ci/newest-requirements.txt``);
    ``--repo DIR``: fail unless ``adabalance_hf`` is imported from ``DIR``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import platform
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / ".ci" / "floor-requirements.txt"
# torch's floor is not tested: both environments run CI's pinned CPU build.
NOT_FLOORED = {"torch"}
FLOORED_EXTRAS = ("trl", "peft")
SHOWN = ("torch", "transformers", "accelerate", "datasets", "trl", "peft", "tokenizers",
         "huggingface_hub")  # fmt: skip


def read_pins(path: Path = FLOOR) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            sys.exit(f"{path.name}: {line!r} is not a single 'name==version' pin")
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def lower_bound(req: Requirement) -> str | None:
    bounds = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
    return bounds[0] if len(bounds) == 1 else None


def check_pins() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    stated = list(project["dependencies"])
    for extra in FLOORED_EXTRAS:
        stated += project["optional-dependencies"].get(extra, [])
    pins, seen, errors = read_pins(), set(), []
    for text in stated:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name in NOT_FLOORED:
            continue
        seen.add(name)
        bound = lower_bound(req)
        if name not in pins:
            errors.append(f"pyproject.toml has {text!r}; {FLOOR.name} has no {req.name}")
        elif bound != pins[name]:
            errors.append(f"pyproject.toml has {text!r}; {FLOOR.name} pins {pins[name]}")
    for name in pins.keys() - seen:
        errors.append(f"{FLOOR.name} pins {name}, which pyproject.toml does not bound")
    for error in errors:
        print(f"ci: floor pins: {error}", file=sys.stderr)
    if not errors:
        listed = ", ".join(f"{name}=={version}" for name, version in pins.items())
        print(f"ci: floor pins match pyproject.toml: {listed}")
    return 1 if errors else 0


def installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def check_versions(label: str, expect: str | None, repo: str | None) -> int:
    spec = importlib.util.find_spec("adabalance_hf")
    origin = Path(spec.origin).resolve().parent if spec and spec.origin else None
    shown = ", ".join(f"{name} {installed(name)}" for name in SHOWN)
    print(f"ci: {label}: python {platform.python_version()}, {shown}; adabalance_hf from {origin}")
    errors = []
    if expect:
        pins = read_pins(Path(expect)).items()
        errors += [
            f"{n} {installed(n)} installed, {v} pinned" for n, v in pins if installed(n) != v
        ]
    if repo is not None and origin != Path(repo).resolve() / "adabalance_hf":
        errors.append(f"adabalance_hf comes from {origin}, not from {repo}")
    for error in errors:
        print(f"ci: {label}: {error}", file=sys.stderr)
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pins")
    versions = sub.add_parser("versions")
    versions.add_argument("label")
    versions.add_argument("--expect", metavar="FILE", help="the pins the versions must match")
    versions.add_argument("--repo")
    args = parser.parse_args()
    if args.command == "pins":
        return check_pins()
    return check_versions(args.label, args.expect, args.repo)


if __name__ == "__main__":
    sys.exit(main())
