"""The `coding` example environment: fix a real bug in a tiny repository, graded by hidden tests.

Each task is a folder of tasks/ (installed root-only, 0700, under /opt/env):

    tasks/<id>/ISSUE.md          the issue: the task's public instruction
    tasks/<id>/repo/             the repository, copied to /workspace at setup (it has a failing test)
    tasks/<id>/hidden/test_*.py  the hidden tests: more cases than the visible ones

`submit` collects the candidate's *.py files from /workspace (read as uid 1000),
and runs the hidden tests against them as the separate `grader` user (uid 2000),
whose files uid 1000 can neither read nor write and whose processes it cannot
signal; the candidate code itself runs in a worker process apart from the
verdicts (see orsbox/agent/grading/grading_harness.py). Reward: the fraction
of hidden tests that pass.
"""

from __future__ import annotations

import os
import pwd
from typing import Dict, List

from orsbox.agent import TaskTable, TextBlock, ToolOutput, tool
from orsbox.agent.grading import collect_files, run_hidden_tests, write_files
from orsbox.agent.runtime.processes import RUNNER
from orsbox.agent.toolsets import FileTools, ShellTools

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")

SPLITS: Dict[str, List[str]] = {
    "train": ["ini-parser", "lru-cache", "date-range", "money-rounding", "text-wrap"],
    "test": ["expr-tokenizer", "csv-quotes", "slugify-unicode", "pagination", "semver-compare"],
}

#: The user the hidden tests run as (created in the Dockerfile): not the command user, not root.
GRADER_USER = "grader"

PROMPT_TAIL = """

The repository is in /workspace; run its tests with `python3 -m unittest`. Fix the bug the issue
describes in the code (the tests are not the problem). Work with the bash and file tools, then call
submit: hidden tests check the fix, and your reward is the fraction of them that pass."""


def read_text(task_id: str, name: str) -> str:
    with open(os.path.join(TASKS_DIR, task_id, name), encoding="utf-8") as f:
        return f.read()


TASKS: Dict[str, List[Dict[str, str]]] = {
    split: [{"id": task_id, "instruction": read_text(task_id, "ISSUE.md").strip()} for task_id in ids]
    for split, ids in SPLITS.items()
}


class CodingEnvironment(ShellTools, FileTools, TaskTable):
    """Fix the bug an issue describes; `submit` runs hidden tests as a separate grader user."""

    task_table = TASKS

    async def setup(self) -> None:
        await write_files(task_files(self.task["id"], "repo"))

    def get_prompt(self) -> List[TextBlock]:
        return [TextBlock(self.task["instruction"] + PROMPT_TAIL)]

    @tool(exclusive=True)
    async def submit(self) -> ToolOutput:
        """Submit the repository in /workspace: hidden tests run against it. Ends the episode."""
        try:
            candidate = await collect_files(self.workspace, ("*.py",))
        except ValueError as exc:
            return ToolOutput(blocks=[TextBlock("Not graded: %s" % exc)], metadata={"passed": 0, "total": 0},
                              reward=0.0, finished=True)
        grader = pwd.getpwnam(GRADER_USER)
        if grader.pw_uid in (0, RUNNER.limits.uid):
            raise RuntimeError("the grader user must differ from root and the command user")
        report = await run_hidden_tests(task_files(self.task["id"], "hidden"), candidate,
                                        uid=grader.pw_uid, gid=grader.pw_gid)
        metadata = {"passed": report.passed, "total": report.total, "outcomes": report.outcomes,
                    "problem": report.problem}
        return ToolOutput(blocks=[TextBlock("Submitted. " + report.summary())], metadata=metadata,
                          reward=report.score, finished=True)


def task_files(task_id: str, part: str) -> Dict[str, str]:
    """The files of a task's `repo` or `hidden` folder: {path relative to it: text}."""
    root = os.path.join(TASKS_DIR, task_id, part)
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files
