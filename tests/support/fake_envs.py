"""Environments for the fast tier: served by the real agent as a local process, no container.

Their tools never run commands (the fast tier runs on the host): they answer from
memory, sleep, or fail, which is all the protocol, SSE and admission tests need.
"""

from __future__ import annotations

import asyncio

from orsbox.agent import Environment, TextBlock, ToolOutput, tool

TASKS: dict[str, list[dict[str, str]]] = {
    "train": [{"id": f"train-{i}", "word": f"word-{i}"} for i in range(5)],
    "test": [{"id": f"test-{i}", "word": f"other-{i}"} for i in range(3)],
}


class EchoEnvironment(Environment):
    """Say the task's word back (`answer`) for reward 1; `echo`, `sleep`, `big` and `fail` for the protocol."""

    forkable = True  # its state is its task (the counters below are for tests of one session)

    @classmethod
    def list_splits(cls) -> list[str]:
        return list(TASKS)

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, str]]:
        return TASKS[split]

    def __init__(self, task: dict[str, str], secrets: dict[str, str] | None = None) -> None:
        super().__init__(task, secrets)
        self.calls = 0
        self.sleeping = self.most_sleeping = 0

    def get_prompt(self) -> list[TextBlock]:
        return [TextBlock("Answer with the word {}.".format(self.task.get("word")))]

    @tool
    def echo(self, text: str) -> ToolOutput:
        """Answer `text` unchanged."""
        self.calls += 1
        return ToolOutput([TextBlock(text)], metadata={"calls": self.calls})

    @tool(concurrent=True)
    async def sleep(self, seconds: float) -> ToolOutput:
        """Sleep, then answer; metadata says how many sleeps ran at once at most so far."""
        self.sleeping += 1
        self.most_sleeping = max(self.most_sleeping, self.sleeping)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.sleeping -= 1
        return ToolOutput([TextBlock(f"slept {seconds}")], metadata={"most_at_once": self.most_sleeping})

    @tool
    def big(self, size: int) -> ToolOutput:
        """Answer `size` characters."""
        return ToolOutput([TextBlock("x" * size)])

    @tool
    def fail(self) -> ToolOutput:
        """Raise."""
        raise RuntimeError("the tool broke")

    @tool
    def secret(self, name: str) -> ToolOutput:
        """Whether a secret of that name reached the environment (never its value)."""
        return ToolOutput([TextBlock(str(name in self.secrets))])

    @tool
    def secret_is(self, name: str, value: str) -> ToolOutput:
        """Whether the secret `name` reached the environment with this value (never the value itself)."""
        return ToolOutput([TextBlock(str(self.secrets.get(name) == value))])

    @tool(exclusive=True)
    def answer(self, word: str) -> ToolOutput:
        """Submit the answer; ends the episode."""
        return ToolOutput([TextBlock("ok")], reward=float(word == self.task.get("word")), finished=True)


class BrokenSetupEnvironment(EchoEnvironment):
    """Its setup always fails."""

    def setup(self) -> None:
        raise RuntimeError("setup exploded")


class SlowSetupEnvironment(EchoEnvironment):
    """Its setup takes the task's `delay` seconds (default 2)."""

    async def setup(self) -> None:
        await asyncio.sleep(float(self.task.get("delay", 2)))
