"""The admin API, for operator keys only (the `authenticate` middleware answers 403 to client keys):
every live session whoever owns it, one session's details with its container's live figures, ending
one, its container's logs, and the session events (`sessions/events.py`) as SSE or WebSocket.

    GET  /admin/sessions                 ?env= &state= &owner= (owner digest prefix or key id) &min_age= (s)
    GET  /admin/sessions/{sid}           details, calls so far, live CPU/memory/pids of its cgroup
    POST /admin/sessions/{sid}/end       {"reason": "..."}
    GET  /admin/sessions/{sid}/logs      ?tail= lines (text/plain, at most LOG_BYTES)
    GET  /admin/sessions/{sid}/events    SSE with ids; Last-Event-ID (or ?after=) replays what came after it,
                                         then live until the session ends (?follow=0: only the replay);
                                         a WebSocket upgrade gets the same
    GET  /admin/events                   the same, server-wide, never ending
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import BadRequest, NotFound, OrsboxError
from ..sessions import Session, State
from ..sessions.events import Event, EventLog, Lost
from .exchange import Exchange
from .keys import BACKEND, CONFIG, SESSIONS
from .openapi import SSE, Api, openapi_document
from .responses import compact_json
from .sse import EventStream

admin_api = Api()

ADMIN_ERRORS = (403,)
LOG_LINES = 200  # default ?tail=
MAX_LOG_LINES = 10_000
LOG_BYTES = 256 * 1024  # of a logs answer at most (the last ones)
STATES = {state.value for state in State}


class SessionSummary(BaseModel):
    id: str
    env: str
    kind: str = Field(description="ors or sandbox")
    state: str
    owner: str = Field(description="the owner digest (an HMAC of the API key's identity)")
    key: str | None = Field(description="the id of the API key that created it (None: adopted after a restart)")
    task_id: str | None
    created: float = Field(description="unix seconds")
    age: float = Field(description="seconds since created")
    last_used: float = Field(description="unix seconds of the last request or call")
    calls: int = Field(description="calls so far (since this server has served it)")
    running_calls: int
    container: str | None = Field(description="the container's name, once started")


class SessionList(BaseModel):
    sessions: list[SessionSummary]


class Stats(BaseModel):
    cpu_seconds: float | None
    memory_bytes: int | None
    memory_limit: int | None
    memory_peak: int | None
    pids: int | None
    pids_limit: int | None


class SessionDetails(SessionSummary):
    policy: str = Field(description="the digest of the policy it runs under")
    image: str
    container_id: str | None
    last_call: float | None = Field(description="unix seconds of the last call's start")
    error: str | None = Field(description="why setup failed, if it did")
    stats: Stats | None = Field(description="live figures of its container's cgroup (None until started)")
    stats_error: str | None


class EndBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=200, description="shown to the session's client in its 410s")


class Ended(BaseModel):
    sid: str
    ended: bool


# ---------------------------------------------------------------- sessions


@admin_api.get("/admin/sessions", answer=SessionList, errors=(400, *ADMIN_ERRORS))
async def list_sessions(x: Exchange[None]) -> SessionList:
    """Every live session, whoever owns it, oldest first; filters: env, state, owner (digest prefix or key id),
    min_age (s)."""
    query = x.request.query
    state = query.get("state")
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(sorted(STATES))}")
    min_age = _number(query, "min_age", 0.0)
    env, owner = query.get("env"), query.get("owner")
    manager = x.app[SESSIONS]
    found = [summary(session, manager.events) for session in manager.registry.live.values()]
    found = [s for s in found if (env is None or s.env == env.lower()) and (state is None or s.state == state)
             and (not owner or s.owner.startswith(owner) or s.key == owner) and s.age >= min_age]
    return SessionList(sessions=sorted(found, key=lambda s: s.created))


@admin_api.get("/admin/sessions/{sid}", answer=SessionDetails, errors=(404, *ADMIN_ERRORS))
async def inspect_session(x: Exchange[None]) -> SessionDetails:
    """One live session: environment, task, policy, container, times, calls, live CPU/memory/pids."""
    manager = x.app[SESSIONS]
    session = _live(x)
    sandbox = session.sandbox
    stats, stats_error = None, None
    if sandbox is not None and session.state is not State.ENDED:
        try:
            stats = Stats(**dataclasses.asdict(await x.app[BACKEND].stats(sandbox.ref)))
        except OrsboxError as exc:
            stats_error = str(exc.detail)[:500]
    else:
        stats_error = f"no container is running for it ({session.state.value})"
    trail = manager.events.trails.get(session.id)
    return SessionDetails(
        **summary(session, manager.events).model_dump(), policy=session.env.policy.digest(),
        image=session.env.image.tags[0] if session.env.image.tags else session.env.image.image_id,
        container_id=sandbox.ref.id if sandbox is not None else None,
        last_call=trail.last_call if trail is not None else None,
        error=str(session.error.detail)[:1000] if session.error is not None else None,
        stats=stats, stats_error=stats_error)


@admin_api.post("/admin/sessions/{sid}/end", body=EndBody, answer=Ended, errors=(404, *ADMIN_ERRORS))
async def end_session(x: Exchange[EndBody]) -> Ended:
    """End a live session (its client gets 410 with the reason); answers once its container is removed."""
    sid = x.request.match_info["sid"]
    await x.app[SESSIONS].end_by_operator(sid, x.body.reason.strip())
    return Ended(sid=sid, ended=True)


@admin_api.get("/admin/sessions/{sid}/logs", answer=str, errors=(400, 404, *ADMIN_ERRORS))
async def session_logs(x: Exchange[None]) -> web.Response:
    """The last lines its container wrote (?tail=, default 200), at most 256 KiB: text/plain."""
    tail = int(_number(x.request.query, "tail", LOG_LINES, integer=True))
    if not 1 <= tail <= MAX_LOG_LINES:
        raise BadRequest(f"tail must be between 1 and {MAX_LOG_LINES}")
    session = _live(x)
    if session.sandbox is None:
        raise NotFound(f"session {session.id[:200]!r} has no container ({session.state.value})")
    data = await x.app[BACKEND].logs(session.sandbox.ref, tail=tail, max_bytes=LOG_BYTES)
    return web.Response(body=data, content_type="text/plain", charset="utf-8")


# ---------------------------------------------------------------- events


@admin_api.get("/admin/sessions/{sid}/events", answer=SSE, errors=(400, 404, *ADMIN_ERRORS))
async def session_events(x: Exchange[None]) -> web.StreamResponse:
    """The session's events as SSE (or WebSocket), replayed after Last-Event-ID, then live until it ends."""
    sid = x.request.match_info["sid"]
    if not x.app[SESSIONS].events.knows(sid):
        raise NotFound(f"no events of a session {sid[:200]!r} (none live, or it ended long ago)")
    return await _events(x, sid)


@admin_api.get("/admin/events", answer=SSE, errors=(400, *ADMIN_ERRORS))
async def server_events(x: Exchange[None]) -> web.StreamResponse:
    """Every session's events as SSE (or WebSocket), replayed after Last-Event-ID, then live."""
    return await _events(x, None)


@admin_api.get("/admin/openapi.json", answer=dict[str, Any], errors=ADMIN_ERRORS)
async def admin_openapi(x: Exchange[None]) -> dict[str, Any]:
    """The admin API's OpenAPI 3.1 description."""
    return openapi_document(admin_api, title="orsbox admin", version=__version__)


async def _events(x: Exchange[None], sid: str | None) -> web.StreamResponse:
    log, config = x.app[SESSIONS].events, x.app[CONFIG]
    last_id, restarted = _last_event_id(x.request, log)
    items = log.follow(sid, last_id, config.keepalive, live=x.request.query.get("follow") != "0",
                       restarted=restarted)
    ws = web.WebSocketResponse(heartbeat=config.keepalive)
    if ws.can_prepare(x.request).ok:
        return await _over_websocket(x.request, ws, items, log)
    stream = EventStream(x.request, config.keepalive, config.sse_write_timeout)
    try:
        await stream.open()
        async for item in items:
            if item is None:
                await stream.ping()
            elif isinstance(item, Lost):
                await stream.send("lost", compact_json(_lost(item, log)), event_id=_lost(item, log)["cursor"])
            else:
                await stream.send(item.kind, compact_json(item.as_json()), event_id=item.cursor)
        return await stream.close()
    except ConnectionResetError:
        return stream.response


async def _over_websocket(request: web.Request, ws: web.WebSocketResponse,
                          items: AsyncIterator[Event | Lost | None], log: EventLog) -> web.WebSocketResponse:
    """Each event as a JSON text message ({"id", "time", "session_id", "event", "data"}; a loss as
    {"event": "lost", ...}); closed when the session ends or the client goes."""
    await ws.prepare(request)

    async def send() -> None:
        async for item in items:
            if isinstance(item, Event):
                await ws.send_str(compact_json(item.as_json()))
            elif isinstance(item, Lost):
                await ws.send_str(compact_json(_lost(item, log)))

    sender = asyncio.create_task(send())
    reader = asyncio.create_task(_until_closed(ws))
    try:
        await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, reader):
            task.cancel()
        for task in (sender, reader):
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await task
        await ws.close()
    return ws


async def _until_closed(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends, until it closes."""
    async for message in ws:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            return


# ---------------------------------------------------------------- helpers


def summary(session: Session, events: EventLog) -> SessionSummary:
    now, wall = time.monotonic(), time.time()
    trail = events.trails.get(session.id)
    sandbox = session.sandbox
    return SessionSummary(
        id=session.id, env=session.env.name, kind="sandbox" if session.is_sandbox else "ors",
        state=session.state.value, owner=session.owner, key=trail.key if trail is not None else None,
        task_id=trail.task_id if trail is not None else None, created=round(wall - (now - session.created), 3),
        age=round(now - session.created, 3), last_used=round(wall - (now - session.last_active), 3),
        calls=trail.calls if trail is not None else 0, running_calls=session.running_calls,
        container=sandbox.ref.name if sandbox is not None else None)


def _lost(lost: Lost, log: EventLog) -> dict[str, Any]:
    """A loss, shaped as an event: its cursor is the last one lost, so a reconnect after it resumes past them."""
    return {"id": lost.until, "cursor": f"{log.run}.{lost.until}", "time": time.time(), "session_id": None,
            "event": "lost", "data": dataclasses.asdict(lost)}


def _live(x: Exchange[None]) -> Session:
    sid = x.request.match_info["sid"]
    session = x.app[SESSIONS].registry.live.get(sid)
    if session is None:
        raise NotFound(f"no live session {sid[:200]!r}")
    return session


def _number(query: Any, name: str, default: float, *, integer: bool = False) -> float:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise BadRequest(f"{name} must be {'an integer' if integer else 'a number'}, not {text[:50]!r}") from None
    if value < 0 or value != value:
        raise BadRequest(f"{name} must not be negative")
    return value


def _last_event_id(request: web.Request, log: EventLog) -> tuple[int | None, bool]:
    """Where the client resumes: the Last-Event-ID header (an SSE client's reconnect) or ?after=, a cursor
    (`<run>.<id>`) or an id of this run; and whether that cursor was of an earlier run."""
    text = request.headers.get("Last-Event-ID") or request.query.get("after")
    if text is None or not text.strip():
        return None, False
    try:
        return log.position(text)
    except ValueError:
        raise BadRequest(f"Last-Event-ID must be an event's cursor (run.id) or id, not {text[:50]!r}") from None

