"""The admin API over HTTP on the fake backend: operator keys only, every owner's sessions, inspect with live
figures, end with a reason, logs, and session events (SSE with ids and Last-Event-ID replay, WebSocket)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from orsbox.sessions.events import EventLog

from ..support.ors import Ors
from ..support.run import ADMIN, API_KEY
from .test_metrics import scrape

Client = Ors[TestClient[Any, Any]]
OTHER_KEY = "another-client-" + uuid.uuid4().hex
ADMIN_ROUTES = [("GET", "/admin/sessions"), ("GET", "/admin/sessions/x"), ("POST", "/admin/sessions/x/end"),
                ("GET", "/admin/sessions/x/logs"), ("GET", "/admin/sessions/x/events"), ("GET", "/admin/events"),
                ("GET", "/admin/openapi.json"), ("GET", "/admin/no-such-route")]


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """The next `count` events of an SSE answer (their data, which repeats the cursor), checking each `id:` line."""
    events: list[dict[str, Any]] = []
    event_id = None
    while len(events) < count:
        line = (await response.content.readline()).decode()
        assert line, f"the stream ended after {events}"
        if line.startswith("id: "):
            event_id = line[4:].strip()
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["cursor"] == event_id and event_id.endswith(f".{data['id']}")
            events.append(data)
    return events


async def events_of(ors: Client, path: str, count: int, **headers: str) -> list[dict[str, Any]]:
    async with ors.http.get(path, headers={**ADMIN, **headers}) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        return await read_events(response, count)


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_admin_routes_need_an_operator_key(ors: Client, method: str, path: str) -> None:
    assert (await ors.http.request(method, path, headers={"X-API-Key": ""}, json={})).status == 401
    refused = await ors.http.request(method, path, json={})  # the client's key
    assert refused.status == 403 and "operator key" in (await refused.json())["detail"]


async def test_no_admin_key_configured_means_no_admin_api(server: Any) -> None:
    ors = await server(admin_keys=[])
    assert (await ors.http.get("/admin/sessions", headers=ADMIN)).status == 401
    assert (await ors.http.get("/admin/sessions")).status == 403


async def test_the_admin_sees_every_owner_and_filters(server: Any) -> None:
    ors = await server(api_keys=[API_KEY, OTHER_KEY])
    mine = await ors.new_session("echo")
    theirs = str(uuid.uuid4())
    created = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 1},
                                  headers={"X-Session-ID": theirs, "X-API-Key": OTHER_KEY})
    assert created.status == 200
    await ors.prompt(mine, env="echo")
    # one owner's session is invisible to the other
    assert (await ors.http.post("/ping", headers={"X-Session-ID": theirs})).status == 404
    listed = await (await ors.http.get("/admin/sessions", headers=ADMIN)).json()
    by_id = {s["id"]: s for s in listed["sessions"]}
    assert set(by_id) == {mine, theirs}
    assert by_id[mine]["owner"] != by_id[theirs]["owner"]
    assert (by_id[mine]["key"], by_id[theirs]["key"]) == ("env-1", "env-2")
    assert by_id[theirs]["task_id"] == "train-1" and by_id[mine]["env"] == "echo"

    async def ids(query: str) -> set[str]:
        answer = await ors.http.get(f"/admin/sessions?{query}", headers=ADMIN)
        assert answer.status == 200, await answer.text()
        return {s["id"] for s in (await answer.json())["sessions"]}

    assert await ids("owner=env-2") == {theirs}
    assert await ids(f"owner={by_id[mine]['owner'][:8]}") == {mine}
    assert await ids("env=echo&state=ready") >= {mine}
    assert await ids("env=nosuch") == set()
    assert await ids("min_age=3600") == set()
    for bad in ("state=dancing", "min_age=-1", "min_age=soon"):
        answer = await ors.http.get(f"/admin/sessions?{bad}", headers=ADMIN)
        assert answer.status == 400 and (await answer.json())["detail"]
    await ors.delete(mine)
    await ors.http.post("/delete", headers={"X-Session-ID": theirs, "X-API-Key": OTHER_KEY})


async def test_inspect_shows_calls_and_live_figures(ors: Client) -> None:
    sid = await ors.new_session("echo")
    for _ in range(3):
        await ors.call(sid, "echo", {"text": "hi"}, env="echo")
    answer = await ors.http.get(f"/admin/sessions/{sid}", headers=ADMIN)
    assert answer.status == 200
    details = await answer.json()
    assert details["calls"] == 3 and details["state"] == "ready" and details["kind"] == "ors"
    assert details["task_id"] == "train-0" and details["policy"] and details["container"]
    assert details["last_call"] >= details["created"] and details["last_used"] >= details["created"]
    assert details["stats"]["cpu_seconds"] > 0 and details["stats"]["memory_bytes"] > 1_000_000
    assert details["stats"]["pids"] >= 1 and details["stats_error"] is None
    missing = await ors.http.get("/admin/sessions/no-such-session", headers=ADMIN)
    assert missing.status == 404 and "no live session" in (await missing.json())["detail"]
    await ors.delete(sid)


async def test_ending_a_session_tells_its_client_why_and_counts(ors: Client) -> None:
    sid = await ors.new_session("echo")
    await ors.prompt(sid, env="echo")
    answer = await ors.http.post(f"/admin/sessions/{sid}/end", json={"reason": "maintenance"}, headers=ADMIN)
    assert answer.status == 200 and await answer.json() == {"sid": sid, "ended": True}
    gone = await ors.http.post("/ping", headers={"X-Session-ID": sid})
    assert gone.status == 410 and "ended by the operator: maintenance" in (await gone.json())["detail"]
    assert (await scrape(ors))[("orsbox_sessions_ended_total", (("environment", "echo"), ("reason", "operator")))] == 1
    again = await ors.http.post(f"/admin/sessions/{sid}/end", json={}, headers=ADMIN)
    assert again.status == 404
    too_long = await ors.http.post("/admin/sessions/x/end", json={"reason": "x" * 201}, headers=ADMIN)
    assert too_long.status == 422


async def test_logs_are_the_containers_last_lines(ors: Client) -> None:
    sid = await ors.new_session("echo")
    await ors.prompt(sid, env="echo")
    answer = await ors.http.get(f"/admin/sessions/{sid}/logs?tail=5", headers=ADMIN)
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
    assert len((await answer.text()).splitlines()) <= 5
    for bad in ("tail=0", "tail=many", "tail=100000"):
        assert (await ors.http.get(f"/admin/sessions/{sid}/logs?{bad}", headers=ADMIN)).status == 400
    await ors.delete(sid)


async def test_session_events_replay_after_a_disconnect_without_loss_or_duplicates(ors: Client) -> None:
    secret_input = "do-not-log-" + uuid.uuid4().hex
    sid = await ors.new_session("echo")
    await ors.prompt(sid, env="echo")
    first = await events_of(ors, f"/admin/sessions/{sid}/events", 2)
    assert [e["event"] for e in first] == ["created", "ready"]
    assert first[0]["data"] == {"env": "echo", "kind": "ors", "key": "env-1", "task_id": "train-0"}
    for _ in range(3):  # while nobody listens
        await ors.call(sid, "echo", {"text": secret_input}, env="echo")
    await ors.call(sid, "fail", {}, env="echo")
    await ors.delete(sid)
    rest = await events_of(ors, f"/admin/sessions/{sid}/events", 9, **{"Last-Event-ID": first[-1]["cursor"]})
    assert [e["event"] for e in rest] == ["call_started", "call_finished"] * 3 + [
        "call_started", "call_failed", "ended"]
    assert rest[7]["data"]["error"] == "the tool broke" and rest[7]["data"]["tool"] == "fail"
    every = first + rest
    ids = [e["id"] for e in every]
    assert ids == sorted(set(ids))  # increasing, none twice
    async with ors.http.get(f"/admin/sessions/{sid}/events", headers=ADMIN) as replay:  # the whole, and it ends
        assert [e["id"] for e in await read_events(replay, len(every))] == ids
        assert (await replay.content.read()).strip() == b""  # the session ended: so does its stream
    finished = rest[1]["data"]
    assert finished["tool"] == "echo" and finished["output_chars"] >= len(secret_input) and finished["seconds"] >= 0
    assert rest[-1]["data"] == {"reason": "deleted by the client"}
    assert secret_input not in json.dumps(every)  # inputs are never in events


async def test_the_server_wide_stream_follows_live(ors: Client) -> None:
    async with ors.http.get("/admin/events", headers=ADMIN) as stream:
        assert stream.status == 200
        sid = await ors.new_session("echo")
        created = await read_events(stream, 1)
        assert created[0]["session_id"] == sid and created[0]["event"] == "created"
        await ors.call(sid, "echo", {"text": "x"}, env="echo")
        later = await read_events(stream, 3)
        assert [e["event"] for e in later] == ["ready", "call_started", "call_finished"]
    await ors.delete(sid)


async def test_events_over_websocket_resume_after_an_id(ors: Client) -> None:
    sid = await ors.new_session("echo")
    await ors.call(sid, "echo", {"text": "x"}, env="echo")
    async with ors.http.ws_connect(f"/admin/sessions/{sid}/events", headers=ADMIN) as ws:
        first = [json.loads((await ws.receive()).data) for _ in range(4)]
    assert [e["event"] for e in first] == ["created", "ready", "call_started", "call_finished"]
    await ors.delete(sid)
    async with ors.http.ws_connect(f"/admin/sessions/{sid}/events?after={first[1]['id']}", headers=ADMIN) as ws:
        rest = [json.loads(message.data) async for message in ws if message.type is aiohttp.WSMsgType.TEXT]
    assert [e["id"] for e in rest] == [e["id"] for e in first[2:]] + [rest[-1]["id"]]
    assert rest[-1]["event"] == "ended"
    refused = await ors.http.get("/admin/events", headers={**ADMIN, "Last-Event-ID": "yesterday"})
    assert refused.status == 400
    unknown = await ors.http.get("/admin/sessions/never-was/events", headers=ADMIN)
    assert unknown.status == 404


async def test_event_inputs_only_when_the_operator_turns_them_on(server: Any) -> None:
    ors = await server(event_inputs=True)
    sid = await ors.new_session("echo")
    await ors.call(sid, "echo", {"text": "visible"}, env="echo")
    started = (await events_of(ors, f"/admin/sessions/{sid}/events", 3))[2]
    assert started["event"] == "call_started" and json.loads(started["data"]["input"]) == {"text": "visible"}
    await ors.delete(sid)


class _Session:
    def __init__(self, sid: str) -> None:
        self.id, self.task = sid, {}


async def test_a_reader_pushed_out_of_a_ring_is_told_what_it_lost() -> None:
    log = EventLog(per_session=3, server_wide=5)
    one, two = _Session("one"), _Session("two")
    for _ in range(4):
        log.emit(one, "call_started")  # type: ignore[arg-type]
        log.emit(two, "call_started")  # type: ignore[arg-type]
    lost, events, _ = log.since(None, 1)  # the server ring keeps ids 4..8
    assert lost is not None and (lost.until, lost.count) == (3, 2) and [e.id for e in events] == [4, 5, 6, 7, 8]
    lost, events, _ = log.since("one", 0)  # one's ring keeps 3, 5, 7 of its 1, 3, 5, 7
    assert lost is not None and (lost.until, lost.count) == (1, None) and [e.id for e in events] == [3, 5, 7]
    lost, events, _ = log.since("one", 1)  # it saw 1: nothing lost
    assert lost is None and [e.id for e in events] == [3, 5, 7]
    lost, events, _ = log.since("one", None)  # a new reader: what is kept
    assert lost is None and [e.id for e in events] == [3, 5, 7]


async def test_followers_wake_on_new_events() -> None:
    log = EventLog()
    session = _Session("s")
    seen: list[str] = []

    async def follow() -> None:
        async for item in log.follow("s", None, keepalive=30):
            assert item is not None and not isinstance(item, tuple)
            seen.append(getattr(item, "kind", "lost"))

    log.emit(session, "created")  # type: ignore[arg-type]
    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    log.emit(session, "ready")  # type: ignore[arg-type]
    log.emit(session, "ended", reason="x")  # type: ignore[arg-type]
    await asyncio.wait_for(task, 5)
    assert seen == ["created", "ready", "ended"]


async def test_a_cursor_of_an_earlier_run_is_told_it_lost_what_came_after(ors: Client) -> None:
    sid = await ors.new_session("echo")
    await ors.prompt(sid, env="echo")
    got = await events_of(ors, f"/admin/sessions/{sid}/events", 3, **{"Last-Event-ID": "0123abcd.41"})
    assert got[0]["event"] == "lost" and "restarted" in got[0]["data"]["reason"]
    assert [e["event"] for e in got[1:]] == ["created", "ready"]
    run = got[1]["cursor"].split(".")[0]
    bare = await events_of(ors, f"/admin/sessions/{sid}/events", 1, **{"Last-Event-ID": got[1]["cursor"]})
    assert bare[0]["event"] == "ready" and bare[0]["cursor"] == f"{run}.{bare[0]['id']}"
    for bad in ("x.", ".5", "run.-1", "abc"):
        assert (await ors.http.get("/admin/events", headers={**ADMIN, "Last-Event-ID": bad})).status == 400
    await ors.delete(sid)


async def test_the_admin_api_describes_itself(ors: Client) -> None:
    answer = await ors.http.get("/admin/openapi.json", headers=ADMIN)
    assert answer.status == 200
    document = await answer.json()
    paths = document["paths"]
    assert {"/admin/sessions", "/admin/sessions/{sid}", "/admin/sessions/{sid}/end", "/admin/sessions/{sid}/logs",
            "/admin/sessions/{sid}/events", "/admin/events"} <= set(paths)
    assert "403" in paths["/admin/sessions"]["get"]["responses"]
    assert "stats" in document["components"]["schemas"]["SessionDetails"]["properties"]
