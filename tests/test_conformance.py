"""Side by side with the reference: the same requests to orsbox and to the `openreward` reference
server (running a host-side twin of `bash`), the same answers — status, content type, body —
modulo ids. Known, deliberate differences are listed in README ("Differences from the reference").
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from orsbox.api import create_app
from orsbox.config import Config
from tests.support.ors import Ors, parse_sse
from tests.support.reference_bash import reference_server_process
from tests.support.run import AUTH
from tests.support.server import free_port

pytestmark = pytest.mark.docker

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")


@pytest.fixture(scope="module")
def reference_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = Path(tmp_path_factory.mktemp("reference")) / "reference.log"
    with reference_server_process(port, log_path=log):
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError(f"the reference server did not start: {log.read_text()[-2000:]}")
        yield url


@dataclass
class Answer:
    status: int
    content_type: str
    headers: httpx.Headers
    body: Any

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            body: Any = response.json()
        elif content_type.startswith("text/event-stream"):
            body = [(event, _normalise(data)) for event, data in parse_sse(response.content)]
        else:
            body = response.text
        return cls(response.status_code, content_type, response.headers, body)


def _normalise(data: str) -> Any:
    """SSE data modulo ids: ids become <id>, JSON is parsed."""
    data = UUID.sub("<id>", data)
    try:
        return json.loads(data)
    except ValueError:
        return data


def _local(value: str | None) -> str | None:
    """A header modulo the server's own address (absolute redirects)."""
    return re.sub(r"^http://127\.0\.0\.1:\d+", "", value) if value else value


class Both:
    """Sends each request to both servers; `same()` asserts the answers match."""

    def __init__(self, orsbox: httpx.AsyncClient, reference: httpx.AsyncClient) -> None:
        self.orsbox = orsbox
        self.reference = reference

    async def send(self, method: str, path: str, **kwargs: Any) -> tuple[Answer, Answer]:
        mine, theirs = await asyncio.gather(self.orsbox.request(method, path, **kwargs),
                                            self.reference.request(method, path, **kwargs))
        return Answer.of(mine), Answer.of(theirs)

    async def same(self, method: str, path: str, **kwargs: Any) -> Answer:
        mine, theirs = await self.send(method, path, **kwargs)
        assert (mine.status, mine.content_type) == (theirs.status, theirs.content_type), (path, mine, theirs)
        assert mine.body == theirs.body, (method, path, kwargs)
        for header in ("location", "retry-after", "cache-control", "x-accel-buffering"):
            assert _local(mine.headers.get(header)) == _local(theirs.headers.get(header)), (path, header)
        return mine


@pytest.fixture
async def both(aiohttp_client: Any, config: Config, reference_url: str) -> AsyncIterator[Both]:
    """orsbox serving what the reference serves (other example images may be built on this machine)."""
    ors = Ors(await aiohttp_client(create_app(config.model_copy(update={"environments": ["bash", "orwdemo"]}))))
    orsbox_url = str(ors.http.make_url("/")).rstrip("/")
    async with httpx.AsyncClient(base_url=orsbox_url, timeout=30, follow_redirects=True, headers=AUTH) as mine, \
            httpx.AsyncClient(base_url=reference_url, timeout=30, follow_redirects=True, headers=AUTH) as theirs:
        yield Both(mine, theirs)


DISCOVERY = [
    ("GET", "/health", {}),
    ("GET", "/list_environments", {}),
    ("GET", "/bash/tools", {}),
    ("GET", "/bash/splits", {}),
    ("GET", "/BASH/splits", {}),
    ("POST", "/bash/tasks", {"json": {"split": "train"}}),
    ("POST", "/Bash/tasks", {"json": {"split": "test"}}),
    ("POST", "/bash/tasks", {"json": {"split": "nope"}}),
    ("POST", "/bash/num_tasks", {"json": {"split": "test"}}),
    ("POST", "/bash/num_tasks", {"json": {"split": "nope"}}),
    ("POST", "/bash/task", {"json": {"split": "train", "index": 0}}),
    ("POST", "/bash/task", {"json": {"split": "train", "index": -1}}),
    ("POST", "/bash/task", {"json": {"split": "train", "index": "2"}}),
    ("POST", "/bash/task", {"json": {"split": "train", "index": 5}}),
    ("POST", "/bash/task", {"json": {"split": "train", "index": -6}}),
    ("POST", "/bash/task", {"json": {"split": "train", "index": 1.5}}),
    ("POST", "/bash/task", {"json": {"split": "nope", "index": 0}}),
    ("POST", "/bash/task_range", {"json": {"split": "train"}}),
    ("POST", "/bash/task_range", {"json": {"split": "train", "start": -2}}),
    ("POST", "/bash/task_range", {"json": {"split": "train", "start": 4, "stop": 2}}),
    ("POST", "/bash/task_range", {"json": {"split": "train", "start": -100, "stop": 100}}),
    ("POST", "/bash/task_range", {"json": {"split": "train", "stop": -1}}),
    ("POST", "/bash/task_range", {"json": {"split": "nope"}}),
    ("GET", "/tools", {}),
    ("POST", "/tasks", {"json": {"split": "train"}}),
    ("GET", "/nope/tools", {}),
    ("GET", "/bash/tools/", {}),
    ("GET", "/bash/tasks", {}),
    ("POST", "/bash/splits", {}),
    ("POST", "/health", {}),
    ("POST", "/bash/tasks", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
    ("POST", "/bash/tasks", {"content": b"", "headers": {"Content-Type": "application/json"}}),
    ("POST", "/bash/tasks", {"json": {}}),
    ("POST", "/bash/tasks", {"json": {"split": "train", "extra": 1}}),
    ("POST", "/bash/tasks", {"json": {"split": 3}}),
    ("POST", "/bash/tasks", {"json": [1, 2]}),
    ("POST", "/bash/tasks", {"content": b'{"split": "train"}', "headers": {"Content-Type": "text/plain"}}),
    ("POST", "/bash/task", {"json": {"split": "train"}}),
    ("POST", "/ping", {}),
    ("POST", "/ping", {"headers": {"X-Session-ID": "never-created"}}),
    ("POST", "/delete", {}),
    ("POST", "/delete", {"headers": {"X-Session-ID": "never-created"}}),
    ("POST", "/delete_session", {"headers": {"X-Session-ID": "never-created"}}),
    ("GET", "/bash/prompt", {"headers": {"X-Session-ID": "never-created"}}),
    ("GET", "/bash/prompt", {}),
    ("POST", "/bash/call", {"json": {"name": "bash", "input": {}}, "headers": {"X-Session-ID": "never-created"}}),
    ("POST", "/bash/call", {"content": b"nope", "headers": {"X-Session-ID": "never-created",
                                                              "Content-Type": "application/json"}}),
    ("POST", "/create", {"json": {"split": "train", "index": 0}}),
    ("POST", "/create", {"json": {"env_name": "nope", "split": "train", "index": 0}, "headers": {"X-Session-ID": "x"}}),
    ("POST", "/create", {"json": {"split": "validation", "index": 0}, "headers": {"X-Session-ID": "x"}}),
    ("POST", "/create", {"json": {"split": "train", "index": 9}, "headers": {"X-Session-ID": "x"}}),
    ("POST", "/create", {"json": {"env_name": "bash"}, "headers": {"X-Session-ID": "x"}}),
    ("POST", "/create", {"json": {"split": "train"}, "headers": {"X-Session-ID": "x"}}),
    ("POST", "/create", {"json": {"task_spec": {"id": "train-0"}, "split": "train", "index": 0},
                         "headers": {"X-Session-ID": "x"}}),
    ("POST", "/create", {"json": {"task_spec": {}, "secrets": {}}, "headers": {"X-Session-ID": "x"}}),
    # orwdemo: an openreward environment, served by orsbox through its adapter, by the reference as it is
    ("GET", "/orwdemo/tools", {}),
    ("GET", "/orwdemo/splits", {}),
    ("POST", "/orwdemo/tasks", {"json": {"split": "test"}}),
    ("POST", "/orwdemo/num_tasks", {"json": {"split": "train"}}),
    ("POST", "/orwdemo/task", {"json": {"split": "train", "index": -1}}),
    ("POST", "/orwdemo/task_range", {"json": {"split": "test", "start": 1, "stop": 3}}),
    ("POST", "/orwdemo/tasks", {"json": {"split": "nope"}}),
]


@pytest.mark.parametrize("method,path,kwargs", DISCOVERY, ids=[f"{m} {p} {k}"[:80] for m, p, k in DISCOVERY])
async def test_same_answer_as_the_reference(both: Both, method: str, path: str, kwargs: dict[str, Any]) -> None:
    await both.same(method, path, **kwargs)


async def test_same_episode_as_the_reference(both: Both) -> None:
    sid = str(uuid.uuid4())
    headers = {"X-Session-ID": sid}
    await both.same("POST", "/create", json={"env_name": "bash", "split": "train", "index": 3}, headers=headers)
    await both.same("POST", "/create", json={"env_name": "bash", "split": "train", "index": 3}, headers=headers)
    await both.same("POST", "/ping", headers=headers)
    await both.same("GET", "/bash/prompt", headers=headers)
    await both.same("GET", "/bash/messages", headers=headers)
    await both.same("GET", "/bash/task_tools", headers=headers)
    await both.same("GET", "/tools", headers=headers)
    await both.same("POST", "/bash/call", json={"name": "bash", "input": {"command": "echo hi; (exit 3)"}},
                    headers=headers)
    await both.same("POST", "/bash/call", json={"name": "nope", "input": {}}, headers=headers)
    await both.same("POST", "/bash/call", json={"name": "bash"}, headers=headers)
    await both.same("POST", "/bash/call", json={"name": "bash", "input": "ls"}, headers=headers)
    await both.same("POST", "/bash/call", json={"name": "bash", "input": {}, "task_id": "0" * 32}, headers=headers)
    mine, theirs = await both.send("POST", "/bash/call", json={"name": "bash", "input": {"command": 5}},
                                   headers=headers)
    assert (mine.status, mine.body[0][0]) == (theirs.status, theirs.body[0][0])  # same events …
    assert mine.body[-1][1]["reason"] == theirs.body[-1][1]["reason"] == "input_validation"  # … same reason
    await both.same("POST", "/bash/score_group", json={"candidates": []}, headers=headers)
    mine, theirs = await both.send("POST", "/call", json={"name": "submit", "input": {}}, headers=headers)
    assert [event for event, _ in mine.body] == [event for event, _ in theirs.body] == ["task_id", "end"]
    assert mine.body[-1][1]["output"]["finished"] is theirs.body[-1][1]["output"]["finished"] is True  # (the twin
    # does not grade, so the blocks differ)
    await both.same("POST", "/bash/call", json={"name": "bash", "input": {"command": "true"}}, headers=headers)
    await both.same("POST", "/delete", headers=headers)
    await both.same("POST", "/delete", headers=headers)
    await both.same("POST", "/delete_session", headers=headers)


async def test_same_openreward_episode_as_the_reference(both: Both) -> None:
    headers = {"X-Session-ID": str(uuid.uuid4())}
    await both.same("POST", "/create", json={"env_name": "orwdemo", "split": "train", "index": 2}, headers=headers)
    for path in ("/orwdemo/prompt", "/orwdemo/messages", "/orwdemo/task_tools"):
        await both.same("GET", path, headers=headers)
    for name, tool_input in (("calculator", {"expression": "144 / 12 + 7"}), ("calculator", {"expression": "1/0"}),
                             ("hint", {}), ("nope", {}), ("submit", {"answer": "19"}), ("hint", {})):
        await both.same("POST", "/orwdemo/call", json={"name": name, "input": tool_input}, headers=headers)
    await both.same("POST", "/delete", headers=headers)


async def test_create_session_streams_like_the_reference(both: Both) -> None:
    answer = await both.same("POST", "/create_session", json={})
    assert answer.body == [("task_id", "<id>"), ("end", "")]


async def test_deleted_sessions_answer_410_where_the_reference_forgets_them(both: Both) -> None:
    """A deliberate difference: orsbox remembers ended ids and says why (410), the reference says 404."""
    headers = {"X-Session-ID": str(uuid.uuid4())}
    await both.same("POST", "/create", json={"split": "train", "index": 0}, headers=headers)
    await both.same("GET", "/bash/prompt", headers=headers)
    await both.same("POST", "/delete", headers=headers)
    mine, theirs = await both.send("GET", "/bash/prompt", headers=headers)
    assert (theirs.status, theirs.body) == (404, {"detail": "Active environment not found"})
    assert (mine.status, mine.body) == (410, {"detail": "Session ended: deleted by the client"})
