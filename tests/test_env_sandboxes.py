"""Environments that drive openreward sandboxes, served unmodified (images/swe-mini), on the real engine.

The environment's tools call `AsyncOpenReward().sandbox(...)`: its client reaches orsbox's sandbox API at
OPENREWARD_SESSION_URL, a loopback port in its own network-less container tunnelled over its agent's
channel. The official ORS client plays each task; the sandboxes are the session's own: gone with it,
within its quota, out of reach of the client's key and of other sessions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest

from orsbox.auth.keyring import server_secret

from .support.managed import session_containers
from .support.ors import Ors
from .support.run import API_KEY, NODE_ID, ROOT

pytestmark = [pytest.mark.docker, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
T = TypeVar("T")
ENV = "swe-mini"
TASKS = ["bisect", "intervals", "roman", "stack", "wordcount"]
FIXES = {  # the scripted agent's edit for each task: (file, old, new)
    "bisect": ("search.py", "while lo < hi:", "while lo <= hi:"),
    "intervals": ("intervals.py", "start < merged[-1][1]", "start <= merged[-1][1]"),
    "roman": ("roman.py", "        total += value\n",
              "        following = VALUES[numeral[index + 1]] if index + 1 < len(numeral) else 0\n"
              "        total += -value if value < following else value\n"),
    "stack": ("stack.py", "return self._items.pop(0)", "return self._items.pop()"),
    "wordcount": ("textstats.py", 'return len([word for word in text.split(" ") if word])',
                  "return len(text.split())"),
}

os.environ["OPENREWARD_DISABLE_UPDATE_CHECK"] = "1"


@pytest.fixture(scope="module", autouse=True)
def swe_mini_images(engine: docker.DockerClient) -> None:
    """images/swe-mini and its task images (orsbox/swe-mini-<task>), built if missing."""
    from orsbox.images import build_images

    build_images(ROOT / "images", [ENV], client=engine, progress=lambda line: None)


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def environment(ors: Ors) -> Any:
    from openreward import OpenReward

    base_url = str(ors.http.make_url("/")).rstrip("/")  # type: ignore[attr-defined]
    return OpenReward(api_key=API_KEY).environments.get(ENV, variant=ENV, base_url=base_url)


def sandbox_containers(engine: docker.DockerClient) -> list[Any]:
    return list(engine.containers.list(all=True, filters={
        "label": ["orsbox.managed=1", f"orsbox.node={NODE_ID}", "orsbox.environment=sandbox"]}))


def play(ors: Ors, task: str, engine: docker.DockerClient, *, fix: bool) -> dict[str, Any]:
    """One episode of `task` through the official client, as a scripted agent; what it saw."""
    env = environment(ors)
    index = TASKS.index(task)
    with env.session(split="test", index=index) as session:
        seen: dict[str, Any] = {"prompt": session.get_prompt()[0].text,
                                "tools": sorted(t.name for t in session.list_tools())}
        seen["sandboxes"] = len(sandbox_containers(engine))
        seen["ls"] = session.call_tool("bash", {"command": "ls; id -u"}).blocks[0].text
        if fix:
            name, old, new = FIXES[task]
            seen["view"] = session.call_tool("view", {"path": name}).blocks[0].text
            seen["edit"] = session.call_tool("str_replace", {"path": name, "old_str": old, "new_str": new})
        seen["answer"] = session.call_tool("answer", {"summary": "fixed" if fix else ""})
    seen["sandboxes_after"] = len(sandbox_containers(engine))
    return seen


async def test_every_task_is_solved_through_the_official_client(ors: Ors, engine: docker.DockerClient) -> None:
    for task in TASKS:
        seen = await in_thread(lambda task=task: play(ors, task, engine, fix=True))  # type: ignore[misc]
        assert seen["tools"] == ["answer", "bash", "str_replace", "view"]
        assert "/workspace/repo" in seen["prompt"]
        assert seen["sandboxes"] == 1  # the task's own sandbox, made by the environment
        assert FIXES[task][0] in seen["ls"] and seen["ls"].rstrip().endswith("1000\n[exit code 0]")
        assert FIXES[task][1].strip() in seen["view"]
        assert seen["edit"].metadata == {"ok": True}
        answer = seen["answer"]
        assert (answer.reward, answer.finished) == (1.0, True), (task, answer)
        assert answer.metadata["passed"] == answer.metadata["total"] >= 3
        assert seen["sandboxes_after"] == 0  # ended with the session


async def test_an_empty_answer_scores_less(ors: Ors, engine: docker.DockerClient) -> None:
    seen = await in_thread(lambda: play(ors, "roman", engine, fix=False))
    answer = seen["answer"]
    assert answer.finished and answer.reward is not None and answer.reward < 1.0
    assert answer.metadata["passed"] < answer.metadata["total"]


# ---------------------------------------------------------------- ownership, from inside the environment's container

PROBE = r"""
import json, sys, urllib.request, urllib.error
port = None
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    local, state = line.split()[1], line.split()[3]
    if local.startswith("0100007F:") and state == "0A":
        port = int(local.split(":")[1], 16)
path, sid, key, body = sys.argv[1:5]
headers = {"Content-Type": "application/json", "X-Session-ID": sid, "X-API-Key": key}
request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body.encode(), headers=headers)
try:
    with urllib.request.urlopen(request, timeout=60) as answer:
        if answer.headers.get("Content-Type", "").startswith("text/event-stream"):
            lines = []  # the events up to the last one (the stream may stay open: keep-alive)
            while not lines or not lines[-1].startswith((b"event: end", b"event: error")):
                lines.append(answer.readline())
            lines.append(answer.readline())
            print(json.dumps([answer.status, b"".join(lines).decode()[-2000:]]))
        else:
            print(json.dumps([answer.status, answer.read().decode()[-2000:]]))
except urllib.error.HTTPError as exc:
    print(json.dumps([exc.code, exc.read().decode()[-2000:]]))
except (ConnectionError, urllib.error.URLError) as exc:  # closed before an answer
    print(json.dumps([0, repr(exc)]))
"""


async def probe(container: Any, path: str, sid: str, key: str, body: dict[str, Any],
                user: str = "0") -> tuple[int, str]:
    """A request to the sandbox API from inside an environment's container, as `user` (off the event loop
    that serves orsbox)."""
    argv = ["python3", "-c", PROBE, path, sid, key, json.dumps(body)]
    code, out = await in_thread(lambda: container.exec_run(argv, user=user))
    assert code == 0, out
    status, text = json.loads(out.decode().strip().splitlines()[-1])
    return status, text


def session_key(state_dir: Path, sid: str) -> str:
    return hmac.new(server_secret(state_dir), f"session-api:{sid}".encode(), hashlib.sha256).hexdigest()


async def ready(ors: Ors, sid: str) -> None:
    answer, _ = await ors.call_when_ready(sid, "bash", {"command": "true"}, env=ENV)
    assert answer.status == 200 and answer.events[-1][0] == "end", answer


async def test_an_environments_sandboxes_are_its_own(ors: Ors, engine: docker.DockerClient,
                                                     state_dir: Path) -> None:
    first = await ors.new_session(ENV, split="test", index=0)
    second = await ors.new_session(ENV, split="test", index=1)
    await ready(ors, first)
    await ready(ors, second)
    boxes = {box.labels["orsbox.session"]: box for box in sandbox_containers(engine)}
    assert len(boxes) == 2
    [env_a] = session_containers(engine, first)
    [env_b] = session_containers(engine, second)
    owners = {box.labels["orsbox.owner"] for box in boxes.values()}
    assert len(owners) == 2 and env_a.labels["orsbox.owner"] not in owners  # not the client key's
    run = {"cmd": "echo hi", "timeout_s": 10}
    key_a = session_key(state_dir, first)
    mine = [sid for sid in boxes if (await probe(env_a, "/run", sid, key_a, run))[0] == 200]
    assert len(mine) == 1  # of the two sandboxes, the first session's environment reaches its own only
    theirs = next(sid for sid in boxes if sid != mine[0])
    status, text = await probe(env_a, "/run", theirs, session_key(state_dir, first), run)
    assert status == 404, text
    assert (await probe(env_b, "/run", theirs, session_key(state_dir, second), run))[0] == 200
    # another session's key, or none: refused
    assert (await probe(env_a, "/run", mine[0], session_key(state_dir, second), run))[0] == 401
    assert (await probe(env_a, "/run", mine[0], "", run))[0] == 401
    # the command user's connections are closed unread, even with the key (which it never sees)
    assert (await probe(env_a, "/run", mine[0], key_a, run, user="1000"))[0] == 0
    # the client's own key reaches neither on the public port
    for sid in boxes:
        response = await ors.http.post("/run", json=run, headers={"X-Session-ID": sid})
        assert response.status == 404, await response.text()
        await ors.http.post("/delete_session", headers={"X-Session-ID": sid})
    assert len(sandbox_containers(engine)) == 2
    # within its quota: swe-mini's policy gives each session one sandbox
    create = {"environment": ENV, "image": "orsbox/swe-mini-stack:latest", "machine_size": "1:1"}
    status, text = await probe(env_a, "/create_sandbox", "", session_key(state_dir, first), create)
    assert status == 429 and "max_sandboxes" in text, text
    # deleted with its session
    await ors.delete(first)
    assert session_containers(engine, mine[0]) == [] and session_containers(engine, first) == []
    assert len(sandbox_containers(engine)) == 1
    env_b.kill()  # its environment dies: the session ends, its sandbox with it
    for _ in range(200):
        if not sandbox_containers(engine):
            break
        await asyncio.sleep(0.1)
    assert sandbox_containers(engine) == []
    await ors.delete(second)
