"""A pytest plugin (pyproject's `addopts`): `pytest -m "not docker"`, the fast tier, runs on every core.

The fast tier's tests start real agent processes and wait on them, so it is bound by wall time, not
CPU: pytest-xdist's workers (one per core, at most 4) bring it under a minute on two cores. The full
suite, which shares one Docker engine, stays in one process. `-n` given by hand wins; `-p no:xdist`
or `-n 0` turns it off. Modules that are all `docker` (a module-level `pytestmark`) are not even
imported: some import slow libraries (openreward takes 4 s), in every worker.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

DOCKER_MODULE = re.compile(r"^pytestmark = \[?pytest\.mark\.docker\b", re.MULTILINE)


def pytest_load_initial_conftests(early_config: Any, parser: Any, args: list[str]) -> None:
    if importlib.util.find_spec("xdist") is None or _given(args, "-n", "--numprocesses") or "no:xdist" in args:
        return
    marks = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-m"]
    marks += [arg.removeprefix("-m").strip() for arg in args if arg.startswith("-m") and len(arg) > 2]
    if any(_fast(mark) for mark in marks):
        args[:] = [*args, "-n", str(max(1, min(4, os.cpu_count() or 1)))]


def pytest_ignore_collect(collection_path: Path, config: Any) -> bool | None:
    """In the fast tier, skip modules whose every test needs Docker, without importing them."""
    if not _fast(config.getoption("markexpr") or "") or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    return True if DOCKER_MODULE.search(collection_path.read_text(errors="replace")) else None


def _fast(mark: str) -> bool:
    return mark.replace(" ", "").strip("'\"") == "notdocker"


def _given(args: list[str], *options: str) -> bool:
    return any(arg in options or any(arg.startswith(option + "=") for option in options) or
               (arg.startswith("-n") and arg[2:].isdigit()) for arg in args)
