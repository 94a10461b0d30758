"""ORS routes: parse with a protocol model, one catalog or SessionManager call, answer.

Check order follows the reference: JSON decode (422) → `X-Session-ID` (400) →
session lookup and readiness (404/410/503/500) → body fields (422) → logic.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .. import __version__
from ..errors import BadRequest, BadSecrets, InvalidBody, MissingSessionId, NotFound, OrsboxError
from ..protocol import (
    Blocks,
    CallBody,
    CreateBody,
    ListToolsAnswer,
    Message,
    NumTasksAnswer,
    ScoreGroupBody,
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
from .keys import CATALOG, CONFIG, SESSIONS
from .openapi import SSE, Api, openapi_document
from .responses import json_response
from .sse import EventStream

api = Api()
GATED = (404, 410, 500, 502, 503)  # what waiting for a session's readiness can answer
M = TypeVar("M", bound=BaseModel)


# ---------------------------------------------------------------- request helpers


async def read_json(request: web.Request) -> Any:
    """The body as JSON, or 422 shaped as FastAPI's."""
    if request.content_type not in ("application/json", "") and not request.content_type.endswith("+json"):
        raise InvalidBody([{"type": "model_attributes_type", "loc": ["body"],
                            "msg": "Input should be a valid dictionary or object to extract fields from",
                            "input": (await request.text())[:200]}])
    raw = await request.read()
    if not raw.strip():
        raise InvalidBody([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}])
    try:
        return json.loads(raw)
    except ValueError as exc:
        position = getattr(exc, "pos", 0)
        raise InvalidBody([{"type": "json_invalid", "loc": ["body", position], "msg": "JSON decode error",
                            "input": {}, "ctx": {"error": getattr(exc, "msg", str(exc))}}]) from None


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data, from_attributes=True)  # FastAPI's error for a non-object body
    except ValidationError as exc:
        errors = [{**error, "loc": ["body", *error["loc"]]} for error in exc.errors(include_url=False)]
        # FastAPI's encoder turns the exception objects in `ctx` into {}: do the same.
        raise InvalidBody(json.loads(json.dumps(errors, default=lambda _: {}))) from None


def session_id(request: web.Request) -> str:
    sid = request.headers.get("X-Session-ID", "").strip()
    if not sid:
        raise MissingSessionId()
    return sid


def api_key(request: web.Request) -> str | None:
    return request.headers.get("X-API-Key")


# ---------------------------------------------------------------- service


@api.get("/health", answer=StatusAnswer, errors=(503,))
async def health(request: web.Request) -> web.Response:
    """`ok`, or 503 while the Docker engine does not answer (watched in the background: never waits on it)."""
    if not request.app[SESSIONS].engine_up:
        return json_response({"status": "engine_unreachable", "detail": "the Docker engine does not answer"},
                             status=503, headers={"Retry-After": "5"})
    return json_response({"status": "ok"})


@api.get("/version", answer=VersionAnswer)
async def version(request: web.Request) -> web.Response:
    """orsbox's version."""
    return json_response({"version": __version__, "build_sha": None})


@api.get("/openapi.json", answer=dict[str, Any])
async def openapi(request: web.Request) -> web.Response:
    """This API's OpenAPI 3.1 description, generated from the models the routes use."""
    return json_response(openapi_document(api, title="orsbox", version=__version__))


# ---------------------------------------------------------------- discovery


@api.get("/list_environments", answer=list[str])
async def list_environments(request: web.Request) -> web.Response:
    """Names of the environments served, the default first."""
    return json_response(request.app[CATALOG].names())


@api.get("/{env}/tools", answer=ListToolsAnswer, errors=(404,))
async def tools(request: web.Request) -> web.Response:
    """The environment's shared tools."""
    env = request.app[CATALOG].get(request.match_info["env"])
    return json_response(list_tools_answer(env.tools))


@api.get("/{env}/splits", answer=list[Split], errors=(404,))
async def splits(request: web.Request) -> web.Response:
    """The environment's task splits."""
    return json_response(request.app[CATALOG].get(request.match_info["env"]).splits)


@api.post("/{env}/tasks", body=SplitBody, answer=TasksAnswer, errors=(400, 404))
async def tasks(request: web.Request) -> web.Response:
    """Every task of a split."""
    body = validate(SplitBody, await read_json(request))
    env_name = request.match_info["env"]
    env = request.app[CATALOG].get(env_name)
    return json_response({"tasks": env.listed_tasks(body.split), "env_name": env_name})


@api.post("/{env}/num_tasks", body=SplitBody, answer=NumTasksAnswer, errors=(400, 404))
async def num_tasks(request: web.Request) -> web.Response:
    """How many tasks a split has."""
    body = validate(SplitBody, await read_json(request))
    env = request.app[CATALOG].get(request.match_info["env"])
    return json_response({"num_tasks": len(env.split_tasks(body.split))})


@api.post("/{env}/task", body=TaskBody, answer=TaskAnswer, errors=(400, 404))
async def task(request: web.Request) -> web.Response:
    """One task of a split, by Python index (-1 is the last)."""
    body = validate(TaskBody, await read_json(request))
    env_name = request.match_info["env"]
    env = request.app[CATALOG].get(env_name)
    return json_response({"task": env.task(body.split, body.index), "env_name": env_name})


@api.post("/{env}/task_range", body=TaskRangeBody, answer=TasksAnswer, errors=(400, 404))
async def task_range(request: web.Request) -> web.Response:
    """Tasks of a split by slice: start inclusive, stop exclusive, negatives from the end."""
    body = validate(TaskRangeBody, await read_json(request))
    env_name = request.match_info["env"]
    env = request.app[CATALOG].get(env_name)
    return json_response({"tasks": env.task_range(body.split, body.start, body.stop), "env_name": env_name})


# ---------------------------------------------------------------- sessions


@api.post("/create_session", answer=SSE)
async def create_session(request: web.Request) -> web.StreamResponse:
    """Mint a session id, answered as SSE (`task_id` = the id, then an empty `end`) as the client needs."""
    stream = EventStream(request, request.app[CONFIG].keepalive)
    await stream.open()
    await stream.send("task_id", str(uuid.uuid4()))
    await stream.send("end", "")
    return await stream.close()


@api.post("/create", body=CreateBody, answer=SidAnswer, session=True, errors=(404,))
async def create(request: web.Request) -> web.Response:
    """Open an episode: answers at once; the session's container starts in the background."""
    raw = await read_json(request)
    sid = session_id(request)
    body = validate(CreateBody, raw)
    if body.toolset_name is not None:
        raise BadRequest(f"unknown toolset {body.toolset_name!r}; this environment declares no toolsets")
    try:
        secrets = parse_secrets(request.headers.get("X-Secrets"))
    except ValueError as exc:
        raise BadSecrets(str(exc)) from None
    request.app[SESSIONS].create(sid, body, secrets, api_key(request))
    return json_response({"sid": sid})


@api.post("/ping", answer=StatusAnswer, session=True, errors=(404, 410))
async def ping(request: web.Request) -> web.Response:
    """Keep the session alive (resets its idle clock)."""
    request.app[SESSIONS].get(session_id(request), api_key(request))
    return json_response({"status": "ok"})


@api.post("/delete", answer=SidAnswer, session=True)
async def delete(request: web.Request) -> web.Response:
    """End the episode: tears the environment down and removes its container. Idempotent."""
    sid = session_id(request)
    await request.app[SESSIONS].delete(sid, api_key(request))
    return json_response({"sid": sid})


@api.post("/delete_session", answer=SidAnswer, session=True)
async def delete_session(request: web.Request) -> web.Response:
    """Accepted for client compatibility; does nothing."""
    return json_response({"sid": session_id(request)})


# ---------------------------------------------------------------- episode


@api.get("/{env}/prompt", answer=Blocks, session=True, errors=GATED)
async def prompt(request: web.Request) -> web.Response:
    """The task's prompt blocks, once the session is set up."""
    manager = request.app[SESSIONS]
    session = await manager.ready(session_id(request), api_key(request))
    return json_response(await manager.prompt(session))


@api.get("/{env}/messages", answer=list[Message], session=True, errors=GATED)
async def messages(request: web.Request) -> web.Response:
    """The prompt as one user message (environments here have no conversation form)."""
    manager = request.app[SESSIONS]
    session = await manager.ready(session_id(request), api_key(request))
    return json_response([{"role": "user", "blocks": await manager.prompt(session), "detail": None}])


@api.post("/{env}/score_group", body=ScoreGroupBody, answer=SSE, session=True, errors=GATED)
async def score_group(request: web.Request) -> web.Response:
    """No orsbox environment scores groups yet: 404 once the session is ready, as the reference answers."""
    raw = await read_json(request)
    await request.app[SESSIONS].ready(session_id(request), api_key(request))
    validate(ScoreGroupBody, raw)
    raise NotFound(f"Environment {request.match_info['env']!r} does not implement score_group")


@api.get("/{env}/task_tools", answer=ListToolsAnswer, session=True, errors=GATED)
async def task_tools(request: web.Request) -> web.Response:
    """The session's tools: shared ones and task-specific ones."""
    manager = request.app[SESSIONS]
    session = await manager.ready(session_id(request), api_key(request))
    answer = await manager.task_tools(session)
    return json_response(list_tools_answer(answer["tools"]))


@api.post("/{env}/call", body=CallBody, answer=SSE, session=True, errors=GATED)
async def call(request: web.Request) -> web.StreamResponse:
    """Run a tool; the result streams back as SSE and is kept for reconnects by `task_id`."""
    raw = await read_json(request)
    manager = request.app[SESSIONS]
    session = await manager.ready(session_id(request), api_key(request))
    body = validate(CallBody, raw)
    stream = EventStream(request, request.app[CONFIG].keepalive)
    record = manager.find_call(session, body.task_id) if body.task_id else manager.start_call(
        session, body.name, body.input)
    try:
        await stream.open()
        if record is None:
            await stream.send("error", "unknown task_id")
            return await stream.close()
        await stream.send("task_id", record.task_id)
        try:
            result = await stream.wait(record.result)
        except OrsboxError as exc:
            await stream.send("error", str(exc.detail))
        else:
            await stream.send_result(result)
        return await stream.close()
    except ConnectionResetError:  # the client left; the call runs on and is kept for a reconnect
        return stream.response
