"""Imports run one way, stages -> libraries (docs/architecture.md, "Direction of imports").

The libraries (rl, data, models, eval, and the reward package) must be usable without the stage contract and the
runner, and the reward package without rlmed at all; an import added inside a function counts too, so the
source is read with `ast` rather than by importing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

LIBRARIES = ["rlmed/rl", "rlmed/data", "rlmed/models", "rlmed/eval", "reward"]
ABOVE_LIBRARIES = ("rlmed.stages", "rlmed.runner", "rlmed.recipe", "rlmed.cli", "rlmed.run")


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, dotted name) of everything `path` imports, relative imports resolved, `from a import b` as a.b."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from rlmed import stages` imports rlmed.stages: name the submodule too.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def library_files() -> list[Path]:
    files = [f for folder in LIBRARIES for f in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 40, "the library folders were not found"  # a wrong ROOT must not pass vacuously
    return files


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_libraries_import_nothing_from_the_stages_or_the_runner(path):
    wrong = [f"{path.relative_to(ROOT)}:{line}: {name}" for line, name in imported_modules(path)
             if any(name == top or name.startswith(top + ".") for top in ABOVE_LIBRARIES)]
    assert not wrong, wrong


@pytest.mark.parametrize("path", sorted((ROOT / "reward").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_reward_package_imports_nothing_from_rlmed(path):
    wrong = [name for _, name in imported_modules(path) if name == "rlmed" or name.startswith("rlmed.")]
    assert not wrong, wrong


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    module = tmp_path / "rlmed" / "rl" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from rlmed.stages.base import StageSpec\n\nfrom ..stages import ppo\n"
                      "from rlmed import runner\n", encoding="utf-8")
    names = sorted(name for _, name in imported_modules(module, root=tmp_path))
    assert names == ["rlmed.runner", "rlmed.stages.base.StageSpec", "rlmed.stages.ppo"]
