"""An environment written purely against openreward's API (images/orwdemo), served unmodified by orsbox.

The official client runs its episodes; every answer is compared with what openreward itself computes
for the same class on the host. The adapter's seam with the agent is tested on the host too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import pytest
from openreward.environments import Environment as OpenRewardEnv
from openreward.environments import Message, Split, TextBlock, ToolOutput, tool
from pydantic import BaseModel

from orsbox.agent import Environment
from orsbox.agent.authoring import AuthoringError
from orsbox.agent.authoring.openreward_adapter import OpenRewardEnvironment, adapt
from orsbox.agent.runtime.processes import RUNNER, CommandLimits
from orsbox.agent.runtime.service import Agent, describe
from orsbox.agent.wire import ErrorType, WireError

from .support.ors import Ors
from .support.run import API_KEY, ROOT

pytestmark = pytest.mark.docker
T = TypeVar("T")

os.environ["OPENREWARD_DISABLE_UPDATE_CHECK"] = "1"


def load_demo() -> ModuleType:
    """images/orwdemo/orwdemo_env.py, imported on the host with the host's openreward."""
    if "orwdemo_env" not in sys.modules:
        spec = importlib.util.spec_from_file_location("orwdemo_env", ROOT / "images" / "orwdemo" / "orwdemo_env.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["orwdemo_env"] = module
        spec.loader.exec_module(module)
    return sys.modules["orwdemo_env"]


@pytest.fixture(scope="module")
def demo() -> Any:
    """The demo environment class, DemoEnv."""
    return load_demo().DemoEnv


async def in_thread(fn: Callable[[], T]) -> T:
    """The official client is synchronous: run it off the event loop that serves orsbox."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def demo_environment(ors: Ors) -> Any:
    from openreward import OpenReward

    base_url = str(ors.http.make_url("/")).rstrip("/")  # orwdemo is not the default environment: name the variant
    return OpenReward(api_key=API_KEY).environments.get("orwdemo", variant="orwdemo", base_url=base_url)


async def host_calls(demo: Any, task: dict[str, Any], calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """What openreward itself answers for these calls, in one session of its own, on the host."""
    env = demo(task_spec=task)
    return [(await env._call_tool(name, tool_input)).model_dump(mode="json") for name, tool_input in calls]


def without_urls(text: str) -> str:
    """pydantic's error messages name a documentation URL with its version; the rest must match."""
    return re.sub(r"https://errors\.pydantic\.dev/[^/]+/", "https://errors.pydantic.dev/*/", text)


# ---------------------------------------------------------------- through orsbox, with the official client


async def test_discovery_is_what_openreward_computes(ors: Ors, demo: Any) -> None:
    tools = await (await ors.http.get("/orwdemo/tools")).json()
    assert tools == demo.list_tools().model_dump(mode="json")
    splits = await (await ors.http.get("/orwdemo/splits")).json()
    assert splits == [split.model_dump() for split in demo.list_splits()]
    listed = await (await ors.http.post("/orwdemo/tasks", json={"split": "test"})).json()
    assert listed == {"tasks": demo.list_tasks("test"), "env_name": "orwdemo"}

    def discover() -> dict[str, Any]:
        env = demo_environment(ors)
        return {
            "splits": env.list_splits(),
            "num_train": env.num_tasks("train"),
            "task": env.get_task("test", 3).task_spec,
            "train": [t.task_spec for t in env.list_tasks("train")],
            "tools": [(t.name, t.description, t.input_schema) for t in env.list_tools()],
        }

    found = await in_thread(discover)
    assert found["splits"] == ["train", "test"]
    assert found["num_train"] == 5 and found["train"] == demo.list_tasks("train")
    assert found["task"] == demo.list_tasks("test")[3]
    assert found["tools"] == [(t.name, t.description, t.input_schema) for t in demo.list_tools().tools]
    assert all("answer" not in task and "19" not in task.values() for task in found["train"])


async def test_a_correct_answer_earns_full_reward(ors: Ors, demo: Any) -> None:
    from openreward.api.errors import ToolCallError

    def episode() -> dict[str, Any]:
        env = demo_environment(ors)
        with env.session(split="train", index=2) as session:
            seen = {
                "prompt": session.get_prompt()[0].text,
                "messages": [m.role for m in session.get_messages()],
                "tools": [t.name for t in session.list_tools()],
                "calculated": session.call_tool("calculator", {"expression": "144 / 12 + 7"}).blocks[0].text,
                "hint": session.call_tool("hint", {}).blocks[0].text,
                "graded": session.call_tool("submit", {"answer": "19"}),
            }
            try:
                session.call_tool("calculator", {"expression": "1 + 1"})
            except ToolCallError as exc:
                seen["after"] = exc.reason
        return seen

    seen = await in_thread(episode)
    assert seen["prompt"].startswith("What is 144 / 12 + 7?\n")
    assert seen["messages"] == ["user"]
    assert seen["tools"] == ["calculator", "submit", "hint"]  # the shared tools, then the task's own
    assert seen["calculated"] == "19" and seen["hint"] == "Division comes before addition."
    graded = seen["graded"]
    assert (graded.reward, graded.finished) == (1.0, True)
    assert graded.metadata == {"task_id": "arith-2", "correct": True, "calculations": 1}
    assert seen["after"] == "episode_finished"  # openreward's own finished latch


async def test_a_wrong_answer_earns_less(ors: Ors) -> None:
    def episode() -> Any:
        env = demo_environment(ors)
        with env.session(split="test", index=0) as session:
            assert [t.name for t in session.list_tools()] == ["calculator", "submit"]  # no hint for this task
            return session.call_tool("submit", {"answer": "openreward"})

    graded = await in_thread(episode)
    assert (graded.reward, graded.finished, graded.blocks[0].text) == (0.0, True, "Not correct.")


async def test_bad_input_and_unknown_tools_are_openreward_errors(ors: Ors, demo: Any) -> None:
    from openreward.api.errors import ToolCallError

    task = demo.list_tasks("train")[0]
    [expected] = await host_calls(demo, task, [("submit", {"answer": ""})])
    assert expected["reason"] == "input_validation"

    def misuse() -> list[tuple[str, str]]:
        errors = []
        env = demo_environment(ors)
        with env.session(split="train", index=0) as session:
            for name, tool_input in (("submit", {"answer": ""}), ("nope", {})):
                try:
                    session.call_tool(name, tool_input)
                except ToolCallError as exc:
                    errors.append((exc.reason, exc.detail))
        return errors

    (bad, unknown) = await in_thread(misuse)
    assert bad[0] == "input_validation" and "string_too_short" in bad[1]
    assert without_urls(bad[1]) == without_urls(expected["error"])
    assert unknown == ("not_found", "'nope' is not a valid tool")


async def test_results_are_openreward_s_own_json(ors: Ors, demo: Any) -> None:
    task = demo.list_tasks("train")[0]
    sid = await ors.new_session("orwdemo", task_spec=task)
    prompt = await (await ors.http.get("/orwdemo/prompt", headers={"X-Session-ID": sid})).json()
    assert prompt == [block.model_dump(mode="json") for block in demo(task_spec=task).get_prompt()]
    calls = [("calculator", {"expression": "17 * 23"}), ("calculator", {"expression": "1 / 0"}),
             ("calculator", {}), ("hint", {}), ("submit", {"answer": " 391.0 "}), ("submit", {"answer": "391"})]
    results = []
    for name, tool_input in calls:
        call = await ors.call(sid, name, tool_input, env="orwdemo")
        assert call.status == 200
        results.append(call.result)
    await ors.delete(sid)
    expected = await host_calls(demo, task, calls)
    assert [without_urls(str(result)) for result in results] == [without_urls(str(e)) for e in expected]
    assert [r.get("reason") for r in results] == [None, None, "input_validation", None, None, "episode_finished"]
    assert results[4]["output"]["reward"] == 1.0


# ---------------------------------------------------------------- the adapter's seam, on the host


class Answer(BaseModel):
    text: str


class Conversation(OpenRewardEnv):
    """An index-only, conversation-shaped environment whose tools misbehave."""

    events: list[str] = []  # noqa: RUF012 - a log the tests read

    def __init__(self, task_spec: Any = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006
        super().__init__(task_spec, secrets)
        self.secrets = secrets

    @classmethod
    def list_splits(cls) -> list[Any]:
        return ["train", Split(name="held-out", type="test")]

    @classmethod
    def list_tasks(cls, split: str) -> list[Any]:
        raise NotImplementedError

    @classmethod
    async def num_tasks(cls, split: str) -> int:
        return 2

    @classmethod
    async def get_task(cls, split: str, index: int) -> dict[str, Any]:
        return {"id": f"{split}-{index}"}

    async def setup(self) -> None:
        self.events.append(f"setup {self.task_spec['id']} with {sorted(self.secrets)}")

    def teardown(self) -> None:
        self.events.append("teardown")

    def get_messages(self) -> list[Message]:
        return [Message(role="system", blocks=[TextBlock(text="Be brief.")]),
                Message(role="user", blocks=[TextBlock(text="Say hi.")])]

    @tool
    def boom(self) -> ToolOutput:
        """Raises."""
        raise RuntimeError("kaput")

    @tool
    async def say(self, params: Answer) -> ToolOutput:
        """Say something."""
        return ToolOutput(blocks=[TextBlock(text=params.text)], reward=1.0, finished=True)


class NoTools(OpenRewardEnv):
    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train"]

    @classmethod
    def list_tasks(cls, split: str) -> list[Any]:
        return [{"id": "t"}]

    def get_prompt(self) -> list[TextBlock]:
        return []


def test_only_openreward_environments_are_adapted() -> None:
    class Native(Environment):
        pass

    assert adapt(Native) is None and adapt(object) is None and adapt(OpenRewardEnv) is None and adapt(None) is None
    adapted = adapt(Conversation)
    assert adapted is not None and issubclass(adapted, OpenRewardEnvironment) and adapted.__name__ == "Conversation"
    with pytest.raises(AuthoringError, match="Environment 'notools' has no tools defined"):
        adapt(NoTools)


def test_index_only_task_sets_are_described_through_get_task() -> None:
    adapted = adapt(Conversation)
    assert adapted is not None
    data = describe(adapted)
    assert data["splits"] == [{"name": "train", "type": "train"}, {"name": "held-out", "type": "test"}]
    assert data["tasks"] == {"train": [{"id": "train-0"}, {"id": "train-1"}],
                             "held-out": [{"id": "held-out-0"}, {"id": "held-out-1"}]}
    assert data["listable"] == {"train": False, "held-out": False}
    assert data["tools"] == Conversation.list_tools().model_dump(mode="json")["tools"]


async def test_the_agent_serves_an_openreward_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    Conversation.events.clear()
    nobody = 64124  # teardown kills every process of the command uid: here one that has none on the host
    monkeypatch.setattr(RUNNER, "limits", CommandLimits(uid=nobody, gid=nobody))
    agent = Agent(f"{__name__}:Conversation")
    await agent.setup({"task": {"id": "train-1"}, "secrets": {"TOKEN": "s3cret"}})
    assert Conversation.events == ["setup train-1 with ['TOKEN']"]
    assert await agent.prompt({}) == [  # openreward's own flattening of a conversation
        {"text": "[system]", "detail": {"role": "system"}, "type": "text"},
        {"text": "Be brief.", "detail": None, "type": "text"},
        {"text": "[user]", "detail": {"role": "user"}, "type": "text"},
        {"text": "Say hi.", "detail": None, "type": "text"},
    ]
    assert [t["name"] for t in (await agent.task_tools({}))["tools"]] == ["boom", "say"]
    with pytest.raises(WireError) as failed:
        await agent.call_tool({"name": "boom", "input": {}})
    assert (failed.value.type, failed.value.message) == (ErrorType.TOOL_FAILED, "kaput")
    assert await agent.call_tool({"name": "nope", "input": {}}) == {
        "ok": False, "error": "'nope' is not a valid tool", "reason": "not_found"}
    said = await agent.call_tool({"name": "say", "input": {"text": "hi"}})
    assert said == {"ok": True, "output": {"blocks": [{"text": "hi", "detail": None, "type": "text"}],
                                           "metadata": None, "reward": 1.0, "finished": True}}
    await agent.teardown({})
    assert Conversation.events[-1] == "teardown"

