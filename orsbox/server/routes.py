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
    CallBody,
    CreateBody,
    ScoreGroupBody,
    SplitBody,
    TaskBody,
    TaskRangeBody,
    list_tools_answer,
    parse_secrets,
)
from .keys import CATALOG, CONFIG, SESSIONS
from .responses import json_response
from .sse import EventStream

routes = web.RouteTableDef()
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


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/version")
async def version(request: web.Request) -> web.Response:
    return json_response({"version": __version__, "build_sha": None})


# ---------------------------------------------------------------- discovery


@routes.get("/list_environments")
async def list_environments(request: web.Request) -> web.Response:
    return json_response(request.app[CATALOG].names())


@routes.get("/{env}/tools")
async def tools(request: web.Request) -> web.Response:
    env = request.app[CATALOG].get(request.match_info["env"])
    return json_response(list_tools_answer(env.tools))


@routes.get("/{env}/splits")
async def splits(request: web.Request) -> web.Response:
    return json_response(request.app[CATALOG].get(request.match_info["env"]).splits)


@routes.post("/{env}/tasks")
async def tasks(request: web.Request) -> web.Response:
    body = validate(SplitBody, await read_json(request))
    env_name = request.match_info["env"]
    env = request.app[CATALOG].get(env_name)
    return json_response({"tasks": env.split_tasks(body.split), "env_name": env_name})


@routes.post("/{env}/num_tasks")
async def num_tasks(request: web.Request) -> web.Response:
    body = validate(SplitBody, await read_json(request))
    env = request.app[CATALOG].get(request.match_info["env"])
    return json_response({"num_tasks": len(env.split_tasks(body.split))})


@routes.post("/{env}/task")
async def task(request: web.Request) -> web.Response:
    body = validate(TaskBody, await read_json(request))
    env_name = request.match_info["env"]
    env = request.app[CATALOG].get(env_name)
    return json_response({"task": env.task(body.split, body.index), "env_name": env_name})


@routes.post("/{env}/task_range")
async def task_range(request: web.Request) -> web.Response:
    body = validate(TaskRangeBody, await read_json(request))
    env_name = request.match_info["env"]
    env = request.app[CATALOG].get(env_name)
    return json_response({"tasks": env.task_range(body.split, body.start, body.stop), "env_name": env_name})


# ---------------------------------------------------------------- sessions


@routes.post("/create_session")
async def create_session(request: web.Request) -> web.StreamResponse:
    """Mint a session id, answered as SSE (`task_id` = the id, then an empty `end`) as the client needs."""
    stream = EventStream(request, request.app[CONFIG].keepalive)
    await stream.open()
    await stream.send("task_id", str(uuid.uuid4()))
    await stream.send("end", "")
    return await stream.close()


@routes.post("/create")
async def create(request: web.Request) -> web.Response:
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


@routes.post("/ping")
async def ping(request: web.Request) -> web.Response:
    request.app[SESSIONS].get(session_id(request), api_key(request))
    return json_response({"status": "ok"})


@routes.post("/delete")
async def delete(request: web.Request) -> web.Response:
    sid = session_id(request)
    await request.app[SESSIONS].delete(sid, api_key(request))
    return json_response({"sid": sid})


@routes.post("/delete_session")
async def delete_session(request: web.Request) -> web.Response:
    return json_response({"sid": session_id(request)})


# ---------------------------------------------------------------- episode


@routes.get("/{env}/prompt")
async def prompt(request: web.Request) -> web.Response:
    manager = request.app[SESSIONS]
    session = await manager.ready(session_id(request), api_key(request))
    return json_response(await manager.prompt(session))


@routes.get("/{env}/messages")
async def messages(request: web.Request) -> web.Response:
    """The prompt as one user message (environments here have no conversation form)."""
    manager = request.app[SESSIONS]
    session = await manager.ready(session_id(request), api_key(request))
    return json_response([{"role": "user", "blocks": await manager.prompt(session), "detail": None}])


@routes.post("/{env}/score_group")
async def score_group(request: web.Request) -> web.Response:
    """No orsbox environment scores groups yet: 404 once the session is ready, as the reference answers."""
    raw = await read_json(request)
    await request.app[SESSIONS].ready(session_id(request), api_key(request))
    validate(ScoreGroupBody, raw)
    raise NotFound(f"Environment {request.match_info['env']!r} does not implement score_group")


@routes.get("/{env}/task_tools")
async def task_tools(request: web.Request) -> web.Response:
    manager = request.app[SESSIONS]
    session = await manager.ready(session_id(request), api_key(request))
    answer = await manager.task_tools(session)
    return json_response(list_tools_answer(answer["tools"]))


@routes.post("/{env}/call")
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
