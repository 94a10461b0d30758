"""ORS routes: each handler is one catalog or SessionManager call.

The route table names each body model once; `exchange.bind` parses and checks in
the reference's order (JSON decode 422 → `X-Session-ID` 400 → readiness of gated
routes 404/410/503/500 → body fields 422) before a handler runs.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Any

from aiohttp import web

from .. import __version__
from ..errors import BadRequest, BadSecrets, NotFound
from ..protocol import (
    Blocks,
    CallBody,
    CreateBody,
    ForkAnswer,
    ForkBody,
    JSONObject,
    ListToolsAnswer,
    Message,
    NumTasksAnswer,
    ScoreGroupBody,
    Secret,
    SidAnswer,
    Split,
    SplitBody,
    StatusAnswer,
    TaskAnswer,
    TaskBody,
    TaskRangeBody,
    TasksAnswer,
    VersionAnswer,
    list_tools_answer,
    parse_secrets,
)
from .exchange import Exchange
from .keys import CATALOG, CONFIG, SESSIONS
from .openapi import SSE, Api, openapi_document
from .responses import json_response
from .sse import EventStream, stream_call

api = Api()


# ---------------------------------------------------------------- service


@api.get("/health", answer=StatusAnswer, public=True, errors=(503,))
async def health(x: Exchange[None]) -> Any:
    """`ok`, or 503 while the Docker engine does not answer (watched in the background: never waits on it)."""
    if not x.app[SESSIONS].engine_up:
        return json_response({"status": "engine_unreachable", "detail": "the Docker engine does not answer"},
                             status=503, headers={"Retry-After": "5"})
    return StatusAnswer(status="ok")


@api.get("/version", answer=VersionAnswer)
async def version(x: Exchange[None]) -> VersionAnswer:
    """orsbox's version."""
    return VersionAnswer(version=__version__, build_sha=None)


@api.get("/openapi.json", answer=dict[str, Any])
async def openapi(x: Exchange[None]) -> dict[str, Any]:
    """This API's OpenAPI 3.1 description, generated from the models the routes use."""
    return openapi_document(api, title="orsbox", version=__version__)


# ---------------------------------------------------------------- discovery


@api.get("/list_environments", answer=list[str])
async def list_environments(x: Exchange[None]) -> list[str]:
    """Names of the environments served, the default first."""
    return x.app[CATALOG].names()


@api.get("/{env}/tools", answer=ListToolsAnswer, errors=(404,))
async def tools(x: Exchange[None]) -> JSONObject:
    """The environment's shared tools."""
    return list_tools_answer(x.app[CATALOG].get(x.request.match_info["env"]).tools)


@api.get("/{env}/splits", answer=list[Split], errors=(404,))
async def splits(x: Exchange[None]) -> list[JSONObject]:
    """The environment's task splits."""
    return x.app[CATALOG].get(x.request.match_info["env"]).splits


@api.post("/{env}/tasks", body=SplitBody, answer=TasksAnswer, errors=(400, 404))
async def tasks(x: Exchange[SplitBody]) -> TasksAnswer:
    """Every task of a split."""
    env_name = x.request.match_info["env"]
    return TasksAnswer(tasks=x.app[CATALOG].get(env_name).listed_tasks(x.body.split), env_name=env_name)


@api.post("/{env}/num_tasks", body=SplitBody, answer=NumTasksAnswer, errors=(400, 404))
async def num_tasks(x: Exchange[SplitBody]) -> NumTasksAnswer:
    """How many tasks a split has."""
    env = x.app[CATALOG].get(x.request.match_info["env"])
    return NumTasksAnswer(num_tasks=len(env.split_tasks(x.body.split)))


@api.post("/{env}/task", body=TaskBody, answer=TaskAnswer, errors=(400, 404))
async def task(x: Exchange[TaskBody]) -> TaskAnswer:
    """One task of a split, by Python index (-1 is the last)."""
    env_name = x.request.match_info["env"]
    return TaskAnswer(task=x.app[CATALOG].get(env_name).task(x.body.split, x.body.index), env_name=env_name)


@api.post("/{env}/task_range", body=TaskRangeBody, answer=TasksAnswer, errors=(400, 404))
async def task_range(x: Exchange[TaskRangeBody]) -> TasksAnswer:
    """Tasks of a split by slice: start inclusive, stop exclusive, negatives from the end."""
    env_name = x.request.match_info["env"]
    env = x.app[CATALOG].get(env_name)
    return TasksAnswer(tasks=env.task_range(x.body.split, x.body.start, x.body.stop), env_name=env_name)


# ---------------------------------------------------------------- sessions


@api.post("/create_session", answer=SSE)
async def create_session(x: Exchange[None]) -> web.StreamResponse:
    """Mint a session id, answered as SSE (`task_id` = the id, then an empty `end`) as the client needs."""
    stream = EventStream(x.request, x.app[CONFIG].keepalive, x.app[CONFIG].sse_write_timeout)
    await stream.open()
    await stream.send("task_id", str(uuid.uuid4()))
    await stream.send("end", "")
    return await stream.close()


@api.post("/create", body=CreateBody, answer=SidAnswer, session=True, errors=(404,))
async def create(x: Exchange[CreateBody]) -> SidAnswer:
    """Open an episode: answers at once; the session's container starts in the background."""
    body = x.body
    if body.toolset_name is not None:
        raise BadRequest(f"unknown toolset {body.toolset_name!r}; this environment declares no toolsets")
    secrets, client_keys = request_secrets(x)
    x.app[SESSIONS].create(x.sid, x.principal, env_name=body.env_name, split=body.split, index=body.index,
                           task_spec=body.task_spec, secrets=secrets, client_keys=client_keys)
    return SidAnswer(sid=x.sid)


@api.post("/fork", body=ForkBody, answer=ForkAnswer, gated=True, errors=(400, 429, 507))
async def fork(x: Exchange[ForkBody]) -> ForkAnswer:
    """An orsbox extension: `count` new sessions whose /workspace, home and /tmp are copies of this ready
    session's now (not its processes), with its environment's `fork_state()`; they start like created ones."""
    secrets, client_keys = request_secrets(x)
    sids = await x.app[SESSIONS].fork(x.session, x.principal, x.body.count, secrets=secrets, client_keys=client_keys)
    return ForkAnswer(sids=sids)


def request_secrets(x: Exchange[Any]) -> tuple[dict[str, Secret], frozenset[str]]:
    """The request's `X-Secrets`, and the names of those that hold the caller's own API key."""
    try:
        secrets = parse_secrets(x.request.headers.get("X-Secrets"))
    except ValueError as exc:
        raise BadSecrets(str(exc)) from None
    key = x.request.headers.get("X-API-Key") or ""
    client_keys = frozenset(name for name, secret in secrets.items()
                            if key and hmac.compare_digest(secret.value.encode(), key.encode()))
    return secrets, client_keys


@api.post("/ping", answer=StatusAnswer, session=True, errors=(404, 410))
async def ping(x: Exchange[None]) -> StatusAnswer:
    """Keep the session alive (resets its idle clock)."""
    x.app[SESSIONS].get(x.sid, x.owner)
    return StatusAnswer(status="ok")


@api.post("/delete", answer=SidAnswer, session=True)
async def delete(x: Exchange[None]) -> SidAnswer:
    """End the episode: tears the environment down and removes its container. Idempotent."""
    await x.app[SESSIONS].delete(x.sid, x.owner)
    return SidAnswer(sid=x.sid)


@api.post("/delete_session", answer=SidAnswer, session=True)
async def delete_session(x: Exchange[None]) -> SidAnswer:
    """Ends an openreward sandbox (its client's `stop()`); for an ORS session, accepted and does nothing."""
    await x.app[SESSIONS].delete_sandbox(x.sid, x.owner)
    return SidAnswer(sid=x.sid)


# ---------------------------------------------------------------- episode


@api.get("/{env}/prompt", answer=Blocks, gated=True)
async def prompt(x: Exchange[None]) -> list[JSONObject]:
    """The task's prompt blocks, once the session is set up."""
    return await x.app[SESSIONS].prompt(x.session)


@api.get("/{env}/messages", answer=list[Message], gated=True)
async def messages(x: Exchange[None]) -> list[JSONObject]:
    """The prompt as one user message (environments here have no conversation form)."""
    return [{"role": "user", "blocks": await x.app[SESSIONS].prompt(x.session), "detail": None}]


@api.post("/{env}/score_group", body=ScoreGroupBody, answer=SSE, gated=True)
async def score_group(x: Exchange[ScoreGroupBody]) -> web.Response:
    """No orsbox environment scores groups yet: 404 once the session is ready, as the reference answers."""
    raise NotFound(f"Environment {x.request.match_info['env']!r} does not implement score_group")


@api.get("/{env}/task_tools", answer=ListToolsAnswer, gated=True)
async def task_tools(x: Exchange[None]) -> JSONObject:
    """The session's tools: shared ones and task-specific ones."""
    return list_tools_answer((await x.app[SESSIONS].task_tools(x.session))["tools"])


@api.post("/{env}/call", body=CallBody, answer=SSE, gated=True)
async def call(x: Exchange[CallBody]) -> web.StreamResponse:
    """Run a tool; the result streams back as SSE and is kept for reconnects by `task_id`."""
    manager, body = x.app[SESSIONS], x.body
    stream = EventStream(x.request, x.app[CONFIG].keepalive, x.app[CONFIG].sse_write_timeout)
    record = manager.find_call(x.session, body.task_id) if body.task_id else manager.start_call(
        x.session, body.name, body.input)
    return await stream_call(stream, record, unknown="unknown task_id")
