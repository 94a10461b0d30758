"""`swe-mini`: fix a real bug in a small repository, in the shape of SWE-Gym, written purely against openreward.

Each task is a repository with a bug, in an image of its own (`orsbox/swe-mini-<task>`, built from
tasks/<task>/Dockerfile). The tools do not run here: they drive an openreward sandbox of the task's
image, made in `setup` with `AsyncOpenReward().sandbox(...)` (the service at OPENREWARD_SESSION_URL,
with the key in OPENREWARD_API_KEY), and stopped in `teardown`. `answer` puts the task's hidden tests
(kept here, never in the sandbox before) into the repository, runs them there, and rewards the
fraction that passed. Nothing here knows about orsbox.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from openreward import AsyncOpenReward
from openreward.api.sandboxes.types import SandboxSettings
from openreward.environments import Environment, JSONObject, Split, TextBlock, ToolOutput, tool
from pydantic import BaseModel, Field

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
REPO = "/workspace/repo"
MAX_VIEW = 64 * 1024  # bytes of a file `view` shows
RUNNER = r"""
import json, sys, unittest
suite = unittest.defaultTestLoader.discover(".", pattern="test_*.py")
result = unittest.TestResult()
suite.run(result)
failed = len(result.failures) + len(result.errors)
print(json.dumps({"total": result.testsRun, "passed": result.testsRun - failed}))
"""


def task_names() -> List[str]:
    return sorted(p.name for p in TASKS_DIR.iterdir() if (p / "Dockerfile").is_file())


def task_spec(name: str) -> JSONObject:
    return {"id": name, "image": f"orsbox/swe-mini-{name}:latest", "issue": (TASKS_DIR / name / "ISSUE.md").read_text()}


class BashInput(BaseModel):
    command: str = Field(max_length=100_000, description="A bash command, run in the repository.")
    timeout: float = Field(60.0, gt=0, le=600, description="Seconds it may run.")


class ViewInput(BaseModel):
    path: str = Field(max_length=4096, description="A file, relative to the repository or absolute.")


class StrReplaceInput(BaseModel):
    path: str = Field(max_length=4096, description="A file, relative to the repository or absolute.")
    old_str: str = Field(min_length=1, description="Text that occurs exactly once in the file.")
    new_str: str = Field(description="What replaces it.")


class AnswerInput(BaseModel):
    summary: str = Field("", max_length=10_000, description="What you changed (optional).")


class SweMini(Environment):
    """Fix the bug the issue describes in the repository at /workspace/repo, then call answer."""

    def __init__(self, task_spec: JSONObject = {}, secrets: Dict[str, str] = {}) -> None:  # noqa: B006
        super().__init__(task_spec, secrets)
        name = str(task_spec.get("id", ""))
        if name not in task_names():
            raise ValueError(f"unknown task {name!r}")
        self.name = name
        self.sandbox = None

    @classmethod
    def list_splits(cls) -> List[Split]:
        return [Split(name="test", type="test")]

    @classmethod
    def list_tasks(cls, split: str) -> List[JSONObject]:
        return [task_spec(name) for name in task_names()] if split == "test" else []

    async def setup(self) -> None:
        settings = SandboxSettings(environment="swe-mini", image=str(self.task_spec["image"]), machine_size="1:1")
        self.sandbox = AsyncOpenReward().sandbox(settings)
        await self.sandbox.start()
        await self.sandbox.check_run(f"cp -r /opt/task/repo {REPO}")

    async def teardown(self) -> None:
        if self.sandbox is not None:
            await self.sandbox.stop()

    def get_prompt(self) -> List[TextBlock]:
        return [TextBlock(text=f"{self.task_spec['issue']}\nThe repository is at {REPO}. Fix the bug with the "
                               "tools (bash, view, str_replace), then call answer: its tests decide the reward.")]

    @tool
    async def bash(self, params: BashInput) -> ToolOutput:
        """Run a bash command in the repository."""
        result = await self.sandbox.run(f"cd {REPO} && {params.command}", timeout=params.timeout)
        return ToolOutput(blocks=[TextBlock(text=f"{result.output}\n[exit code {result.return_code}]")],
                          metadata={"return_code": result.return_code})

    @tool
    async def view(self, params: ViewInput) -> ToolOutput:
        """Show a file with line numbers."""
        text = (await self.sandbox.download(_path(params.path)))[:MAX_VIEW].decode(errors="replace")
        numbered = "\n".join(f"{n:4d}  {line}" for n, line in enumerate(text.splitlines(), 1))
        return ToolOutput(blocks=[TextBlock(text=numbered)])

    @tool
    async def str_replace(self, params: StrReplaceInput) -> ToolOutput:
        """Replace text that occurs exactly once in a file."""
        path = _path(params.path)
        text = (await self.sandbox.download(path)).decode()
        count = text.count(params.old_str)
        if count != 1:
            return ToolOutput(blocks=[TextBlock(text=f"old_str occurs {count} times in {path}, not once")],
                              metadata={"ok": False})
        await self._put(path, text.replace(params.old_str, params.new_str).encode())
        return ToolOutput(blocks=[TextBlock(text=f"{path} edited")], metadata={"ok": True})

    @tool
    async def answer(self, params: AnswerInput) -> ToolOutput:
        """Submit: the task's tests run in the repository; the reward is the fraction that passed."""
        for test in sorted((TASKS_DIR / self.name / "hidden").glob("test_*.py")):
            await self._put(f"{REPO}/{test.name}", test.read_bytes())
        await self._put("/tmp/swe_mini_runner.py", RUNNER.encode())
        result = await self.sandbox.run(f"cd {REPO} && python3 /tmp/swe_mini_runner.py", timeout=120)
        counts = _counts(result.output)
        reward = counts["passed"] / counts["total"] if counts["total"] else 0.0
        return ToolOutput(blocks=[TextBlock(text=f"{counts['passed']} of {counts['total']} tests passed")],
                          metadata={"task_id": self.name, **counts}, reward=reward, finished=True)

    async def _put(self, path: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile() as local:
            local.write(data)
            local.flush()
            await self.sandbox.upload(local.name, path)


def _path(path: str) -> str:
    return posixpath.normpath(path if path.startswith("/") else posixpath.join(REPO, path))


def _counts(output: str) -> Dict[str, int]:
    """The runner's last line, {"total", "passed"}; none passed if it printed none (it crashed)."""
    last: Optional[str] = output.strip().splitlines()[-1] if output.strip() else None
    try:
        counts = json.loads(last or "")
        return {"total": int(counts["total"]), "passed": int(counts["passed"])}
    except (ValueError, KeyError, TypeError):
        return {"total": 1, "passed": 0}

