"""A Harbor dataset: a folder of task folders, each an ORS task.

    <dataset>/<task>/task.toml                 timeouts, resources, verifier env and user (taskconfig.py)
    <dataset>/<task>/instruction.md            the prompt
    <dataset>/<task>/environment/Dockerfile    the task's image (with docker-compose.yaml: its main service)
    <dataset>/<task>/tests/test.sh             the verifier: writes /logs/verifier/reward.txt or reward.json
    <dataset>/<task>/solution/solve.sh         optional: the reference solution

A task's id is its folder's name. Task folders directly in the dataset make one `test` split; a dataset of
folders of task folders (`<dataset>/<split>/<task>/`) has a split per folder. A malformed task is left out
with a `HarborTaskError` naming the file and the field; the others are served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HarborTaskError
from .compose import Service, compose_file, read_compose
from .taskconfig import TaskConfig, read_task_config

DEFAULT_SPLIT = "test"
TASK_MARKERS = ("task.toml", "instruction.md", "environment")  # a folder with any of these is a task folder
MAX_INSTRUCTION_BYTES = 256 * 1024
MAX_TASKS = 10000
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class HarborTask:
    """One task folder, read and checked."""

    id: str
    split: str
    folder: Path
    config: TaskConfig
    instruction: str
    sidecars: tuple[Service, ...] = ()  # a compose task's services besides main

    @property
    def environment_dir(self) -> Path:
        return self.folder / "environment"

    @property
    def tests_dir(self) -> Path:
        return self.folder / "tests"


@dataclass
class Dataset:
    """A dataset's tasks by split, and the task folders that were left out (with why)."""

    name: str
    folder: Path
    tasks: dict[str, list[HarborTask]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def all_tasks(self) -> list[HarborTask]:
        return [task for tasks in self.tasks.values() for task in tasks]

    def find(self, task_id: str) -> HarborTask | None:
        return next((task for task in self.all_tasks() if task.id == task_id), None)


def is_task_folder(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in TASK_MARKERS)


def load_dataset(name: str, folder: Path) -> Dataset:
    """Every task of the dataset at `folder`; HarborTaskError if it is no dataset at all."""
    if not folder.is_dir():
        raise HarborTaskError(f"dataset {name!r}: {folder} is not a folder")
    dataset = Dataset(name, folder)
    for split, task_folder in _task_folders(folder):
        if len(dataset.all_tasks()) >= MAX_TASKS:
            dataset.problems.append(f"{folder}: more than {MAX_TASKS} tasks; the rest are left out")
            break
        try:
            task = read_task(task_folder, split)
        except HarborTaskError as exc:
            dataset.problems.append(exc.detail)
            continue
        if dataset.find(task.id) is not None:
            dataset.problems.append(f"{task_folder}: task id {task.id!r} is taken by another split's task")
            continue
        dataset.tasks.setdefault(split, []).append(task)
    if not dataset.tasks and not dataset.problems:
        raise HarborTaskError(f"dataset {name!r}: {folder} holds no task folders (folders with a task.toml)")
    return dataset


def _task_folders(folder: Path) -> list[tuple[str, Path]]:
    """(split, task folder) pairs: direct task folders in `test`, folders of task folders by their name."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if is_task_folder(entry):
            found.append((DEFAULT_SPLIT, entry))
        else:
            found += [(entry.name, sub) for sub in sorted(entry.iterdir()) if is_task_folder(sub)]
    return found


def read_task(folder: Path, split: str = DEFAULT_SPLIT) -> HarborTask:
    """One task folder, or HarborTaskError naming the file (and field) that is wrong."""
    if not _ID.match(folder.name):
        raise HarborTaskError(f"{folder}: the folder name is the task id, and {folder.name!r} is not one "
                              "(letters, digits, . _ -, at most 128)")
    config = read_task_config(folder / "task.toml")
    instruction = _read_instruction(folder / "instruction.md")
    environment = folder / "environment"
    compose = compose_file(environment)
    sidecars = read_compose(compose) if compose is not None else ()
    if not (environment / "Dockerfile").is_file():
        raise HarborTaskError(f"{environment / 'Dockerfile'}: missing (the task's image"
                              f"{', its compose main service,' if compose else ''} is built from it)")
    if not (folder / "tests" / "test.sh").is_file():
        raise HarborTaskError(f"{folder / 'tests' / 'test.sh'}: missing (the verifier)")
    return HarborTask(folder.name, split, folder, config, instruction, sidecars)


def _read_instruction(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_INSTRUCTION_BYTES:
            raise HarborTaskError(f"{path}: larger than {MAX_INSTRUCTION_BYTES} bytes")
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise HarborTaskError(f"{path}: {exc.strerror} (the task's prompt)") from None
    except UnicodeDecodeError:
        raise HarborTaskError(f"{path}: not UTF-8 text") from None
    if not text:
        raise HarborTaskError(f"{path}: empty (the task's prompt)")
    return text
