"""The official `openreward` client, unchanged, against orsbox: discovery, episodes, long calls, big results,
readiness and setup failures."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orsbox.api import create_app
from orsbox.config import Config

from .support.ors import Ors
from .support.run import API_KEY, ROOT

pytestmark = pytest.mark.docker
T = TypeVar("T")

os.environ["OPENREWARD_DISABLE_UPDATE_CHECK"] = "1"


async def in_thread(fn: Callable[[], T]) -> T:
    """The official client is synchronous: run it off the event loop that serves orsbox."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def environment(ors: Ors, variant: str | None = None) -> Any:
    from openreward import OpenReward

    base_url = str(ors.http.make_url("/")).rstrip("/")
    return OpenReward(api_key=API_KEY).environments.get("bash", variant=variant, base_url=base_url)


@pytest.mark.parametrize("variant", [None, "bash"])
async def test_discovery_through_the_client(ors: Ors, variant: str | None) -> None:
    def discover() -> dict[str, Any]:
        env = environment(ors, variant)
        return {
            "splits": env.list_splits(),
            "tools": [t.name for t in env.list_tools()],
            "num_test": env.num_tasks("test"),
            "task": env.get_task("test", -1).task_spec["id"],
            "range": [t.task_spec["id"] for t in env.get_task_range("train", 1, 3)],
            "train": [t.task_spec["id"] for t in env.list_tasks("train")],
        }

    found = await in_thread(discover)
    assert found == {
        "splits": ["train", "test"],
        "tools": ["bash", "restart_shell", "submit"],
        "num_test": 5,
        "task": "test-4",
        "range": ["train-1", "train-2"],
        "train": [f"train-{i}" for i in range(5)],
    }


@pytest.mark.parametrize("split,index,solution", [
    ("train", 3, "sort -n numbers.txt > sorted.txt"),
    ("test", 2, "cut -d' ' -f1 access.log | sort -u | wc -l > answer.txt"),
])
async def test_full_episode_through_the_client(ors: Ors, split: str, index: int, solution: str) -> None:
    def episode() -> list[Any]:
        env = environment(ors)
        with env.session(split=split, index=index) as session:
            prompt = session.get_prompt()
            messages = session.get_messages()
            tools = session.list_tools()
            looked = session.call_tool("bash", {"command": "ls"})
            worked = session.call_tool("bash", {"command": solution})
            graded = session.call_tool("submit", {})
        return [prompt, messages, tools, looked, worked, graded]

    prompt, messages, tools, looked, worked, graded = await in_thread(episode)
    assert prompt[0].text and messages[0].role == "user"
    assert [t.name for t in tools] == ["bash", "restart_shell", "submit"]
    assert looked.metadata["exit_code"] == 0 and looked.blocks[0].text
    assert worked.metadata["exit_code"] == 0
    assert (graded.reward, graded.finished) == (1.0, True)


async def test_client_errors_for_bad_calls(ors: Ors) -> None:
    from openreward.api.errors import ToolCallError

    def misuse() -> list[str]:
        reasons = []
        env = environment(ors)
        with env.session(split="train", index=0) as session:
            for name, tool_input in (("nope", {}), ("bash", {"command": 1})):
                try:
                    session.call_tool(name, tool_input)
                except ToolCallError as exc:
                    reasons.append(exc.reason)
        return reasons

    assert await in_thread(misuse) == ["not_found", "input_validation"]


async def test_a_25_second_call_completes_without_a_reconnect(ors: Ors) -> None:
    """Keepalive comments every 10 s keep the client (30 s read timeout) on the same stream."""
    def long_call() -> str:
        env = environment(ors)
        with env.session(split="train", index=0) as session:
            out = session.call_tool("bash", {"command": "sleep 25; echo slept; wc -l < /dev/null"})
            return str(out.blocks[0].text)

    assert await in_thread(long_call) == "slept\n0\n"


async def test_a_result_over_a_megabyte_reassembles_exactly(aiohttp_client: Any, config: Config,
                                                           tmp_path: Path) -> None:
    (tmp_path / "bash.toml").write_text('output_cap = "8m"\n')
    (tmp_path / "default.toml").write_text((ROOT / "sandbox_policies" / "default.toml").read_text())
    ors = Ors(await aiohttp_client(create_app(config.model_copy(update={"policies_dir": tmp_path}))))
    command = "python3 -c \"import sys; sys.stdout.write(''.join('%07d é€😀 \\\\t\\\\n' % i for i in range(100000)))\""

    def big() -> str:
        env = environment(ors)
        with env.session(split="train", index=0) as session:
            out = session.call_tool("bash", {"command": command})
            assert out.metadata["truncated"] is False
            return str(out.blocks[0].text)

    text = await in_thread(big)
    assert text == "".join(f"{i:07d} é€😀 \t\n" for i in range(100000))
    assert len(text.encode()) > 1_500_000


async def test_requests_during_setup_get_503_with_retry_after(aiohttp_client: Any, config: Config) -> None:
    ors = Ors(await aiohttp_client(create_app(config.model_copy(update={"ready_wait": 0.01}))))
    sid = await ors.new_session()
    early = await ors.http.get("/bash/prompt", headers={"X-Session-ID": sid})
    assert early.status == 503
    assert early.headers["Retry-After"] == "2" and early.headers["X-Backend-State"] == "starting"
    assert await early.json() == {"detail": "Environment still starting."}
    for _ in range(100):
        answer = await ors.http.get("/bash/prompt", headers={"X-Session-ID": sid})
        if answer.status == 200:
            break
        await asyncio.sleep(0.1)
    assert answer.status == 200
    await ors.delete(sid)


async def test_the_client_rides_out_a_slow_start(aiohttp_client: Any, config: Config) -> None:
    ors = Ors(await aiohttp_client(create_app(config.model_copy(update={"ready_wait": 0.01}))))

    def episode() -> float:
        env = environment(ors)
        with env.session(split="train", index=1) as session:
            session.call_tool("bash", {"command": "grep -c ERROR app.log > answer.txt"})
            return float(session.call_tool("submit", {}).reward)

    assert await in_thread(episode) == 1.0


async def test_a_failed_setup_is_a_clear_error_not_a_hang(ors: Ors) -> None:
    sid = await ors.new_session(task_spec={"id": "no-such-task"})
    for path in ("/bash/prompt", "/bash/task_tools", "/bash/messages"):
        answer = await ors.http.get(path, headers={"X-Session-ID": sid})
        assert answer.status == 500
        assert (await answer.json())["detail"].startswith("ValueError: unknown task id 'no-such-task'")
    call = await ors.http.post("/bash/call", json={"name": "bash", "input": {"command": "true"}},
                               headers={"X-Session-ID": sid})
    assert call.status == 500
    assert (await ors.http.post("/ping", headers={"X-Session-ID": sid})).status == 200
    await ors.delete(sid)


async def test_a_session_unknown_to_the_server_is_404_for_the_client(ors: Ors) -> None:
    response = await ors.http.get("/bash/prompt", headers={"X-Session-ID": str(uuid.uuid4())})
    assert response.status == 404


async def test_a_missing_image_is_a_clear_setup_error(aiohttp_client: Any, config: Config) -> None:
    import dataclasses

    from orsbox.api.keys import CATALOG

    client = await aiohttp_client(create_app(config))
    catalog = client.app[CATALOG]
    bash = catalog.get("bash")
    gone = dataclasses.replace(bash.image, image_id="sha256:" + "0" * 64)
    catalog._environments["bash"] = dataclasses.replace(bash, image=gone)  # the image was removed under us
    ors = Ors(client)
    sid = await ors.new_session()
    answer = await ors.http.get("/bash/prompt", headers={"X-Session-ID": sid})
    assert answer.status == 500
    detail = (await answer.json())["detail"]
    assert detail.startswith("SandboxError: create container") and "0000000000" in detail
    await ors.delete(sid)
