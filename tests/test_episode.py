"""Whole episodes over HTTP against the real engine: create, prompt, tools, submit, delete."""

from __future__ import annotations

import asyncio
from typing import Any

import docker
import pytest

from .support.managed import session_containers
from .support.ors import Ors
from .support.run import API_KEY

pytestmark = pytest.mark.docker

SOLUTIONS = {
    "train-0": "echo 'hello world' > hello.txt",
    "train-1": "grep -c ERROR app.log > answer.txt",
    "train-2": "printf '#!/bin/bash\\necho \"Hello, $1!\"\\n' > greet.sh && chmod +x greet.sh",
    "train-3": "sort -n numbers.txt > sorted.txt",
    "train-4": "awk '{s+=$1} END {print s}' numbers.txt > answer.txt",
    "test-0": "cd docs && for f in *.txt; do mv \"$f\" \"${f%.txt}.md\"; done",
    "test-1": "tr -s ' ' '\\n' < words.txt | grep . | sort | uniq -c | sort -rn | awk 'NR==1 {print $2}' > answer.txt",
    "test-2": "cut -d' ' -f1 access.log | sort -u | wc -l > answer.txt",
    "test-3": "tar -czf site.tar.gz site",
    "test-4": "sed -i 's/foo/bar/g' config.ini",
}


@pytest.mark.parametrize("split,index", [(split, i) for split in ("train", "test") for i in range(5)])
async def test_scripted_agent_solves_every_task(ors: Ors, engine: docker.DockerClient, split: str, index: int) -> None:
    sid = await ors.new_session(split=split, index=index)
    prompt = await ors.prompt(sid)
    task = (await (await ors.http.post("/bash/task", json={"split": split, "index": index})).json())["task"]
    assert prompt[0]["type"] == "text" and task["instruction"] in prompt[0]["text"]

    step = await ors.bash(sid, SOLUTIONS[task["id"]])
    assert step.output["metadata"]["exit_code"] == 0, step.text
    assert step.output["reward"] == 0.0 and step.output["finished"] is False

    graded = await ors.call(sid, "submit")
    assert graded.output["reward"] == 1.0, (task["id"], graded.output)
    assert graded.output["finished"] is True

    await ors.delete(sid)
    assert session_containers(engine, sid) == []


@pytest.mark.parametrize("split,index,wrong", [
    ("train", 1, "echo 7 > answer.txt"),
    ("test", 4, "sed -i 's/foo/bar/' config.ini"),  # only the first occurrence per line
    ("train", 0, "echo 'hello world' > /tmp/hello.txt"),
])
async def test_wrong_attempt_gets_no_reward(ors: Ors, split: str, index: int, wrong: str) -> None:
    sid = await ors.new_session(split=split, index=index)
    await ors.bash(sid, wrong)
    graded = await ors.call(sid, "submit")
    assert graded.output["reward"] == 0.0 and graded.output["finished"] is True
    await ors.delete(sid)


async def test_task_spec_creates_the_same_episode(ors: Ors) -> None:
    tasks = (await (await ors.http.post("/bash/tasks", json={"split": "test"})).json())["tasks"]
    sid = await ors.new_session(task_spec=tasks[2])
    assert tasks[2]["instruction"] in (await ors.prompt(sid))[0]["text"]
    await ors.delete(sid)


async def test_after_finish_further_calls_are_refused_in_band(ors: Ors) -> None:
    sid = await ors.new_session()
    await ors.call(sid, "submit")
    again = await ors.bash(sid, "echo hi")
    assert again.status == 200
    assert again.result["ok"] is False and again.result["reason"] == "episode_finished"
    await ors.delete(sid)


async def test_the_grader_cannot_be_read_by_commands(ors: Ors) -> None:
    sid = await ors.new_session(split="train", index=1)
    probe = await ors.bash(sid, "id -u; cat /opt/env/bash_env.py; ls /opt/env; cat /proc/1/environ; "
                                "ls /run/orsbox; cat /proc/$(pgrep -f orsbox.agent | head -1)/environ")
    assert probe.text.startswith("1000\n")
    assert "TASKS" not in probe.text and "def " not in probe.text
    assert probe.text.count("Permission denied") >= 4, probe.text
    await ors.delete(sid)


async def test_two_sessions_cannot_see_each_other(ors: Ors, engine: docker.DockerClient) -> None:
    first, second = await asyncio.gather(ors.new_session(), ors.new_session())
    await ors.bash(first, "echo secret-of-first > /workspace/mine.txt; echo tmp > /tmp/first-tmp; sleep 300 &")
    listing = await ors.bash(second, "ls -a /workspace /tmp")
    assert "mine.txt" not in listing.text and "first-tmp" not in listing.text
    look = await ors.bash(second, "cat /workspace/mine.txt; ps -eo user,args")
    assert "secret-of-first" not in look.text and "sleep 300" not in look.text
    assert "No such file" in look.text
    assert len(session_containers(engine, first)) == 1 and len(session_containers(engine, second)) == 1
    assert session_containers(engine, first)[0].id != session_containers(engine, second)[0].id
    await asyncio.gather(ors.delete(first), ors.delete(second))


async def test_the_shell_persists_between_calls_until_restarted(ors: Ors) -> None:
    sid = await ors.new_session()
    await ors.bash(sid, "mkdir -p sub; sleep 600 &")
    await ors.bash(sid, "cd sub; export COLOR=blue; greet() { echo hi $1; }; sleep 600 & setsid sleep 601 &")
    after = await ors.bash(sid, "pwd; echo $COLOR; greet you; ps -eo args | grep -c '[s]leep 60'")
    assert after.text.split() == ["/workspace/sub", "blue", "hi", "you", "3"]
    restarted = await ors.call(sid, "restart_shell")
    assert restarted.text == "The shell was restarted."
    fresh = await ors.bash(sid, "pwd; echo ${COLOR:-unset}; ps -eo args | grep -c '[s]leep 60'")
    assert fresh.text.split() == ["/workspace", "unset", "0"]
    await ors.delete(sid)


async def test_a_shell_that_exits_or_times_out_is_replaced(ors: Ors) -> None:
    sid = await ors.new_session()
    exited = await ors.bash(sid, "cd /tmp; echo bye; exit 7")
    assert exited.text == "bye\n" and exited.output["metadata"]["exit_code"] == 7
    after = await ors.bash(sid, "pwd")
    assert after.text == "/workspace\n" and after.output["metadata"]["shell_restarted"] is True
    slow = await ors.bash(sid, "echo started; sleep 30", timeout=1)
    assert slow.output["metadata"]["timed_out"] is True and slow.text == "started\n"
    again = await ors.bash(sid, "echo ok")
    assert again.text == "ok\n" and again.output["metadata"]["shell_restarted"] is True
    tricky = await ors.bash(sid, "cat; echo \"$(printf 'EOF\\n')\"; echo __orsbox_done_x__ 1; read -t 1 x; echo $?")
    assert tricky.output["metadata"]["exit_code"] == 0 and "__orsbox_done_x__ 1" in tricky.text
    await ors.delete(sid)


async def test_official_client_runs_an_episode(ors: Ors) -> None:
    """The `openreward` client, unchanged, against orsbox (in a thread: it is synchronous)."""
    base_url = str(ors.http.make_url("/")).rstrip("/")

    def episode() -> dict[str, Any]:
        import os

        os.environ["OPENREWARD_DISABLE_UPDATE_CHECK"] = "1"
        from openreward import OpenReward

        env = OpenReward(api_key=API_KEY).environments.get("bash", base_url=base_url)
        task = env.list_tasks("train")[4]
        with env.session(task=task) as session:
            prompt = session.get_prompt()
            tools = [t.name for t in session.list_tools()]
            session.call_tool("bash", {"command": "awk '{s+=$1} END {print s}' numbers.txt > answer.txt"})
            graded = session.call_tool("submit", {})
        return {"prompt": prompt, "tools": tools, "reward": graded.reward, "finished": graded.finished}

    outcome = await asyncio.get_running_loop().run_in_executor(None, episode)
    assert outcome["tools"] == ["bash", "restart_shell", "submit"]
    assert "numbers.txt" in outcome["prompt"][0].text
    assert outcome["reward"] == 1.0 and outcome["finished"] is True
