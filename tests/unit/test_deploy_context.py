"""The deployment image's contents (orsbox/images/deploy.py): it installs exactly pyproject.toml's dependencies,
so everything the server imports must come from them."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from orsbox.images.deploy import ROOT, copy_source, dependencies

SERVER = ROOT / "orsbox"
AGENT = SERVER / "agent"  # runs in environment images, on their python3's standard library


def imported_top_level(path: Path) -> set[str]:
    """The top-level modules *path* imports absolutely."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def distribution_closure(requirements: list[str]) -> set[str]:
    """The distributions *requirements* install, their own requirements included (normalized names)."""
    wanted = [_name(requirement) for requirement in requirements]
    seen: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):  # not an extra's
                wanted.append(_name(requirement.name))
    return seen


def _name(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


def test_every_module_the_server_imports_comes_from_its_declared_dependencies() -> None:
    third_party = {name for path in SERVER.rglob("*.py") if AGENT not in path.parents
                   for name in imported_top_level(path)} - set(sys.stdlib_module_names) - {"orsbox"}
    installed = distribution_closure(dependencies(ROOT / "pyproject.toml"))
    providers = importlib.metadata.packages_distributions()
    missing = {module: providers.get(module) for module in third_party
               if not {_name(dist) for dist in providers.get(module, [])} & installed}
    assert missing == {}, f"imported, but not installed by pyproject.toml's dependencies: {missing}"


def test_the_source_copy_has_no_byte_code(tmp_path: Path) -> None:
    copy_source(SERVER, tmp_path / "orsbox")
    copied = {path.relative_to(tmp_path / "orsbox") for path in (tmp_path / "orsbox").rglob("*")}
    assert Path("cli.py") in copied and Path("agent") in copied
    assert not [path for path in copied if "__pycache__" in path.parts or path.suffix == ".pyc"]
