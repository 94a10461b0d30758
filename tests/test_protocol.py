"""The ORS surface over HTTP: discovery, statuses, error bodies and SSE framing."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import pytest
import structlog

from orsbox.api import create_app
from orsbox.config import Config

from .support.ors import Ors, parse_sse

pytestmark = pytest.mark.docker

BASH_SCHEMA = {
    "additionalProperties": False,
    "properties": {
        "command": {"title": "Command", "type": "string"},
        "timeout": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None, "title": "Timeout"},
    },
    "required": ["command"],
    "title": "BashInput",
    "type": "object",
}


async def test_health_version_and_environments(ors: Ors) -> None:
    health = await ors.http.get("/health")
    assert health.status == 200 and await health.text() == '{"status":"ok"}'
    assert health.headers["Content-Type"].startswith("application/json")
    version = await (await ors.http.get("/version")).json()
    assert set(version) == {"version", "build_sha"}
    names = await (await ors.http.get("/list_environments")).json()
    assert names == ["bash", *sorted(set(names) - {"bash"})]  # the default first; every built image is served


async def test_discovery(ors: Ors) -> None:
    tools = await (await ors.http.get("/bash/tools")).json()
    assert [t["name"] for t in tools["tools"]] == ["bash", "restart_shell", "submit"]
    assert all(set(t) == {"name", "description", "input_schema"} for t in tools["tools"])
    assert tools["tools"][0]["input_schema"] == BASH_SCHEMA
    assert tools["terminal_tool"] is None and tools["supports_score_group"] is False
    assert await (await ors.http.get("/bash/splits")).json() == [
        {"name": "train", "type": "train"}, {"name": "test", "type": "test"}]
    tasks = await (await ors.http.post("/bash/tasks", json={"split": "train"})).json()
    assert tasks["env_name"] == "bash" and len(tasks["tasks"]) == 5
    assert all({"id", "instruction"} <= set(task) for task in tasks["tasks"])
    count = await (await ors.http.post("/bash/num_tasks", json={"split": "test"})).json()
    assert count == {"num_tasks": 5}
    last = await (await ors.http.post("/bash/task", json={"split": "test", "index": -1})).json()
    assert last["task"]["id"] == "test-4"
    window = await (await ors.http.post("/bash/task_range", json={"split": "train", "start": -2})).json()
    assert [t["id"] for t in window["tasks"]] == ["train-3", "train-4"]
    empty = await (await ors.http.post("/bash/task_range", json={"split": "train", "start": 4, "stop": 2})).json()
    assert empty["tasks"] == []


async def test_environment_names_are_case_insensitive_and_echoed(ors: Ors) -> None:
    answer = await ors.http.post("/BASH/tasks", json={"split": "test"})
    assert answer.status == 200 and (await answer.json())["env_name"] == "BASH"


async def test_bare_paths_redirect_to_the_default_environment(ors: Ors) -> None:
    redirect = await ors.http.get("/tools", allow_redirects=False)
    assert redirect.status == 308 and redirect.headers["Location"] == "/bash/tools"
    followed = await ors.http.post("/tasks", json={"split": "train"})
    assert followed.status == 200 and len((await followed.json())["tasks"]) == 5
    unknown = await ors.http.get("/nope/tools")
    assert unknown.status == 404 and await unknown.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("method,path,body,headers,status,detail", [
    ("post", "/bash/tasks", {"split": "nope"}, {}, 400, "Invalid split"),
    ("post", "/bash/task", {"split": "train", "index": 5}, {}, 400, "Invalid index"),
    ("post", "/bash/task", {"split": "train", "index": -6}, {}, 400, "Invalid index"),
    ("post", "/create", {"env_name": "bash", "split": "train", "index": 0}, {}, 400,
     "X-Session-ID header is required"),
    ("post", "/create", {"env_name": "nope", "split": "train", "index": 0}, {"X-Session-ID": "s"}, 404,
     "unknown environment 'nope'"),
    ("post", "/create", {"split": "validation", "index": 0}, {"X-Session-ID": "s"}, 400, "Invalid split"),
    ("post", "/create", {"split": "train", "index": 99}, {"X-Session-ID": "s"}, 400, "Invalid index"),
    ("post", "/ping", None, {"X-Session-ID": "unknown"}, 404, "Active environment not found"),
    ("get", "/bash/prompt", None, {"X-Session-ID": "unknown"}, 404, "Active environment not found"),
    ("post", "/bash/call", {"name": "bash", "input": {}}, {"X-Session-ID": "unknown"}, 404,
     "Active environment not found"),
    ("post", "/delete", None, {}, 400, "X-Session-ID header is required"),
    ("get", "/health", None, {}, 200, None),
])
async def test_errors_have_the_right_status_and_a_json_detail(
    ors: Ors, method: str, path: str, body: object, headers: dict[str, str], status: int, detail: str | None
) -> None:
    response = await getattr(ors.http, method)(path, json=body, headers=headers)
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/json")
    if detail is not None:
        assert await response.json() == {"detail": detail}


async def test_create_body_must_name_the_task_exactly_once(ors: Ors) -> None:
    for body in ({"env_name": "bash"}, {"split": "train"}, {"task_spec": {"id": "train-0"}, "split": "train",
                                                            "index": 0}):
        response = await ors.http.post("/create", json=body, headers={"X-Session-ID": str(uuid.uuid4())})
        assert response.status == 422, body


async def test_bad_secrets_header_is_400_and_good_one_is_accepted(ors: Ors) -> None:
    bad = await ors.http.post("/create", json={"split": "train", "index": 0},
                              headers={"X-Session-ID": str(uuid.uuid4()), "X-Secrets": "%%%"})
    assert bad.status == 400 and "X-Secrets" in (await bad.json())["detail"]
    secrets = base64.b64encode(json.dumps({"TOKEN": {"value": "s3cr3t", "allowed_domains": []}}).encode()).decode()
    sid = str(uuid.uuid4())
    good = await ors.http.post("/create", json={"split": "train", "index": 0},
                               headers={"X-Session-ID": sid, "X-Secrets": secrets})
    assert good.status == 200
    env = await ors.bash(sid, "env; cat /proc/1/environ 2>&1")
    assert "s3cr3t" not in env.text
    await ors.delete(sid)


async def test_session_lifecycle_statuses(ors: Ors) -> None:
    sid = await ors.new_session()
    again = await ors.http.post("/create", json={"split": "train", "index": 0}, headers={"X-Session-ID": sid})
    assert again.status == 400 and await again.json() == {"detail": "Session already exists"}
    ping = await ors.http.post("/ping", headers={"X-Session-ID": sid})
    assert ping.status == 200 and await ping.json() == {"status": "ok"}
    await ors.delete(sid)
    await ors.delete(sid)  # idempotent
    gone = await ors.http.get("/bash/prompt", headers={"X-Session-ID": sid})
    assert gone.status == 410 and "deleted" in (await gone.json())["detail"]
    call = await ors.http.post("/bash/call", json={"name": "bash", "input": {"command": "true"}},
                               headers={"X-Session-ID": sid})
    assert call.status == 410
    unknown_delete = await ors.http.post("/delete", headers={"X-Session-ID": "never-created"})
    assert unknown_delete.status == 200 and await unknown_delete.json() == {"sid": "never-created"}
    assert (await ors.http.post("/delete_session", headers={"X-Session-ID": sid})).status == 200


async def test_tool_errors_are_in_band(ors: Ors) -> None:
    sid = await ors.new_session()
    unknown = await ors.call(sid, "rm_rf", {})
    assert unknown.status == 200
    assert unknown.result == {"ok": False, "error": "'rm_rf' is not a valid tool", "reason": "not_found"}
    for bad_input in ({}, {"command": 5}, {"command": "ls", "extra": True}, {"command": "ls", "timeout": "x"}):
        wrong = await ors.call(sid, "bash", bad_input)
        assert wrong.status == 200 and wrong.result["ok"] is False
        assert wrong.result["reason"] == "input_validation", wrong.result
    not_an_object = await ors.http.post("/bash/call", json={"name": "bash", "input": "ls"},
                                        headers={"X-Session-ID": sid})
    assert not_an_object.status == 422
    missing_name = await ors.http.post("/bash/call", json={"input": {}}, headers={"X-Session-ID": sid})
    assert missing_name.status == 422
    await ors.delete(sid)


async def test_sse_framing_on_the_wire(ors: Ors) -> None:
    sid = await ors.new_session()
    answer = await ors.bash(sid, "echo hi")
    assert answer.status == 200
    text = answer.raw.decode()
    assert re.fullmatch(r"event: task_id\r\ndata: [0-9a-f]{32}\r\n\r\nevent: end\r\ndata: \{.*\}\r\n\r\n", text, re.S)
    assert json.loads(answer.events[-1][1]) == {
        "ok": True,
        "output": {"blocks": [{"text": "hi\n", "detail": None, "type": "text"}],
                   "metadata": {"exit_code": 0, "timed_out": False, "truncated": False},
                   "reward": 0.0, "finished": False},
    }
    await ors.delete(sid)


async def test_create_session_answers_sse(ors: Ors) -> None:
    response = await ors.http.post("/create_session", json={})
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = parse_sse(await response.read())
    assert events[0][0] == "task_id" and uuid.UUID(events[0][1]) and events[1] == ("end", "")


async def test_large_results_are_chunked_and_reassemble_exactly(ors: Ors) -> None:
    sid = await ors.new_session()
    # 200 000 chars with whitespace runs and multi-byte characters at awkward places
    command = ("python3 -c \"import sys; sys.stdout.write(''.join(('x'*4090+'      é€😀 ' if i % 3 else 'y'*4095+' ')"
               " for i in range(48)))\"")
    answer = await ors.bash(sid, command)
    chunks = [data for event, data in answer.events if event == "chunk"]
    assert len(chunks) >= 40
    assert all(len(chunk) <= 4096 and not chunk[0].isspace() and not chunk[-1].isspace() for chunk in chunks)
    expected = "".join(("x" * 4090 + "      é€😀 " if i % 3 else "y" * 4095 + " ") for i in range(48))
    assert answer.text == expected
    # the official client lstrip()s every data value: reassembling that way must give the same result
    stripped = "".join(data.lstrip() for event, data in answer.events if event in ("chunk", "end"))
    assert json.loads(stripped)["output"]["blocks"][0]["text"] == expected
    await ors.delete(sid)


async def test_reconnect_by_task_id_replays_without_running_again(ors: Ors) -> None:
    sid = await ors.new_session()
    first = await ors.bash(sid, "echo run >> runs.txt; wc -l < runs.txt")
    replay = await ors.call(sid, "bash", {"command": "ignored"}, task_id=first.task_id)
    assert replay.task_id == first.task_id and replay.result == first.result
    unknown = await ors.call(sid, "bash", {"command": "true"}, task_id="f" * 32)
    assert unknown.events == [("error", "unknown task_id")]
    count = await ors.bash(sid, "wc -l < runs.txt")
    assert count.text.strip() == "1"
    await ors.delete(sid)


async def test_messages_wrap_the_prompt(ors: Ors) -> None:
    sid = await ors.new_session()
    answer = await ors.http.get("/bash/messages", headers={"X-Session-ID": sid})
    assert answer.status == 200
    assert await answer.json() == [{"role": "user", "blocks": await ors.prompt(sid), "detail": None}]
    await ors.delete(sid)


async def test_long_calls_send_keepalive_comments(aiohttp_client: Any, config: Config) -> None:
    client = await aiohttp_client(create_app(config.model_copy(update={"keepalive": 0.3})))
    ors = Ors(client)
    sid = await ors.new_session()
    answer = await ors.bash(sid, "sleep 1.5; echo done")
    pings = re.findall(rb": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+00:00\r\n\r\n", answer.raw)
    assert len(pings) >= 3
    assert answer.text == "done\n"
    await ors.delete(sid)


async def test_secrets_never_reach_the_logs(ors: Ors) -> None:
    secret = "tok-" + uuid.uuid4().hex
    header = base64.b64encode(json.dumps({"API_TOKEN": {"value": secret}}).encode()).decode()
    with structlog.testing.capture_logs() as events:
        sid = str(uuid.uuid4())
        created = await ors.http.post("/create", json={"split": "train", "index": 0},
                                      headers={"X-Session-ID": sid, "X-Secrets": header})
        assert created.status == 200
        await ors.bash(sid, "echo working")
        await ors.delete(sid)
    assert any(event["event"] == "session_ready" for event in events)
    assert secret not in repr(events)
