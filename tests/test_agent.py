"""The agent package on the host, without Docker: its task-table helper, its teardown, how it is staged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import orsbox.agent
from orsbox.agent import TaskTable, TextBlock
from orsbox.agent.runtime import service
from orsbox.agent.runtime.processes import RUNNER, CommandLimits
from orsbox.backends.docker.engine import stage_agent

QUESTIONS = {"train": [{"id": "add", "question": "2 + 2?"}, {"id": "mul", "question": "2 × 3?"}],
             "test": [{"id": "pow", "question": "2 ** 5?"}]}


class Quiz(TaskTable):
    task_table = QUESTIONS

    def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(self.task["question"])]


def test_a_task_table_lists_its_splits_and_tasks_and_refuses_unknown_ids() -> None:
    assert Quiz.list_splits() == ["train", "test"]
    assert Quiz.list_tasks("test") == [{"id": "pow", "question": "2 ** 5?"}]
    assert Quiz.num_tasks("train") == 2 and Quiz.get_task("train", 1)["id"] == "mul"
    assert service.describe(Quiz)["listable"] == {"train": True, "test": True}
    assert Quiz({"id": "mul"}).task == {"id": "mul"}
    with pytest.raises(ValueError, match=r"^unknown task id 'div'; expected one of \['add', 'mul', 'pow'\]$"):
        Quiz({"id": "div"})


async def test_teardown_kills_the_processes_of_the_policys_command_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[int] = []

    def kill_processes(uid: int, **_: Any) -> bool:
        killed.append(uid)
        return True

    monkeypatch.setattr(service, "kill_processes", kill_processes)
    monkeypatch.setattr(RUNNER, "limits", CommandLimits(uid=4321, gid=4321))  # as `--limits` would configure it
    agent = service.Agent(f"{__name__}:Quiz")
    await agent.setup({"task": {"id": "add"}})
    assert await agent.teardown({}) == {}
    assert killed == [4321]


def test_the_whole_agent_package_is_staged_without_bytecode(tmp_path: Path) -> None:
    source = Path(orsbox.agent.__file__).parent
    staged = stage_agent(tmp_path) / "orsbox" / "agent"

    def tree(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}

    assert tree(staged) == tree(source)
    assert {"runtime/oom_first.sh", "runtime/fileops.py", "grading/grading_harness.py"} <= set(tree(staged))
    assert not list(staged.rglob("__pycache__"))
    assert stage_agent(tmp_path) == staged.parent.parent  # the same content, the same folder
