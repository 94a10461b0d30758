"""The sandbox API's routes, on the ORS server's port (no path clashes: `/ping` and `/delete_session`
are shared, and mean the same for both kinds of session).

`/create_sandbox` and `/run` answer as resumable SSE (a `task_id` first, keepalives, the result as
`chunk`s and `end`, failures as `error`); the file routes answer plain HTTP with query parameters.
Status codes follow what openreward's client retries (5xx, 429) and treats as final (4xx).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

from aiohttp import web

from ..agent.wire import Method
from ..api.exchange import Exchange
from ..api.keys import BACKEND, CONFIG, POLICIES, SESSIONS
from ..api.openapi import SSE, Api
from ..api.sse import EventStream, stream_call
from ..errors import BadRequest, SandboxError
from ..protocol import JSONObject
from ..sessions import State
from .mapping import (
    SANDBOX_POLICY,
    allowlist_update,
    asked_for_network,
    plan_sandbox,
    request_label,
    sandbox_environment,
)
from .models import CreateSandboxBody, NetworkPolicy, RunBody

sandbox_api = Api()

MAX_RUN_BODY = 16 * 1024 * 1024  # a /run's JSON: `upload()` sends a 10 MiB file as a 13.4 MB command
MAX_CHUNK = 4 * 1024 * 1024  # bytes of one /write_file or /read_file (the client's chunks: 4 MiB - 64 KiB)
AGENT_PIECE = 768 * 1024  # bytes per agent read: its answer frame stays under every session's frame limit
PULL_TIMEOUT = 300.0  # s to pull a sandbox image the engine lacks


@sandbox_api.post("/create_sandbox", body=CreateSandboxBody, answer=SSE, errors=(403, 429))
async def create_sandbox(x: Exchange[CreateSandboxBody]) -> web.StreamResponse:
    """Start an openreward sandbox; its id comes back as the `task_id` and in the final `{"sid"}`."""
    manager, body = x.app[SESSIONS], x.body
    if body.task_id:  # the client resumes a creation: the task id is the sandbox's id
        session = manager.registry.owned(body.task_id, x.owner)
    else:
        plan = plan_sandbox(body, x.app[POLICIES].resolve(SANDBOX_POLICY), x.app[CONFIG].image_patterns)
        found = await x.app[BACKEND].find_image(plan.image, pull=x.app[CONFIG].pull_images, timeout=PULL_TIMEOUT)
        env = sandbox_environment(plan, found.image_id, found.tags)
        setup = {"env": {**found.env, **plan.env}, "workdir": found.workdir}
        session = manager.create_sandbox(str(uuid.uuid4()), x.principal, env, setup, request_label(body))
    stream = EventStream(x.request, x.app[CONFIG].keepalive, x.app[CONFIG].sse_write_timeout)
    try:
        await stream.open()
        if session is None:
            await stream.send("error", f"unknown task_id {body.task_id}")
            return await stream.close()
        await stream.send("task_id", session.id)
        await stream.wait(asyncio.ensure_future(session.settled.wait()))
        if session.state is State.READY:
            await stream.send_result({"sid": session.id})
        else:
            reason = session.error.detail if session.error is not None else "the sandbox ended while starting"
            await stream.send("error", str(reason))
        return await stream.close()
    except ConnectionResetError:  # the client left; the sandbox starts on, and a resume finds it by its id
        return stream.response


@sandbox_api.post("/run", body=RunBody, answer=SSE, gated=True, max_body=MAX_RUN_BODY)
async def run(x: Exchange[RunBody]) -> web.StreamResponse:
    """Run a command (a fresh shell each time); the result `{output (base64), return_code, timed_out}`."""
    manager, body = x.app[SESSIONS], x.body
    try:
        body.cmd.encode()
    except UnicodeEncodeError:
        raise BadRequest("cmd is not valid Unicode (it holds a lone surrogate)") from None
    params: JSONObject = {"cmd": body.cmd, "timeout_s": body.timeout_s, "max_bytes": body.max_bytes,
                          "shell": body.shell}
    record = manager.find_call(x.session, body.task_id) if body.task_id else manager.start_request(
        x.session, Method.SANDBOX_RUN, params, label="run")
    stream = EventStream(x.request, x.app[CONFIG].keepalive, x.app[CONFIG].sse_write_timeout)
    return await stream_call(stream, record, unknown=f"unknown task_id {body.task_id}", answer=_run_result)


@sandbox_api.post("/stat_file", answer=JSONObject, gated=True, errors=(403, 404))
async def stat_file(x: Exchange[None]) -> Any:
    """A regular file's size, and its sha256 with `sha256=1`."""
    params = {"path": _path(x.request), "sha256": x.request.query.get("sha256") in ("1", "true")}
    answer = _object(await x.app[SESSIONS].request(x.session, Method.SANDBOX_STAT, params), "stat")
    return {key: answer[key] for key in ("size", "sha256") if key in answer}


@sandbox_api.post("/read_file", answer="application/octet-stream", gated=True, errors=(403, 404, 416))
async def read_file(x: Exchange[None]) -> web.Response:
    """Bytes [offset, offset+length) of a regular file, its current size in `X-File-Size`."""
    path, offset = _path(x.request), _number(x.request, "offset", 0)
    length = _number(x.request, "length", MAX_CHUNK)
    if length > MAX_CHUNK:
        raise BadRequest(f"length may be at most {MAX_CHUNK} bytes")
    data, size = bytearray(), 0
    while True:
        piece = _object(await x.app[SESSIONS].request(x.session, Method.SANDBOX_READ, {
            "path": path, "offset": offset + len(data), "length": min(AGENT_PIECE, length - len(data))}), "read")
        size = _integer(piece.get("file_size"), "read")
        chunk = _decode(piece.get("data"), "read")
        data += chunk
        if not chunk or len(data) >= length:
            break
    return web.Response(body=bytes(data), content_type="application/octet-stream",
                        headers={"X-File-Size": str(size)})


@sandbox_api.post("/write_file", answer=JSONObject, gated=True, errors=(403, 404), max_body=MAX_CHUNK,
                  raw_body=True)
async def write_file(x: Exchange[bytes]) -> Any:
    """Write a chunk at `offset` of the file's upload; `commit=1&size=N` checks, hashes and renames it in place."""
    path, manager = _path(x.request), x.app[SESSIONS]
    if x.request.query.get("commit") in ("1", "true"):
        params = {"path": path, "size": _number(x.request, "size", -1)}
        answer = _object(await manager.request(x.session, Method.SANDBOX_COMMIT, params), "commit")
        if not isinstance(answer.get("sha256"), str):
            raise SandboxError("the sandbox's agent answered commit without a sha256")
        return {"sha256": answer["sha256"]}
    params = {"path": path, "offset": _number(x.request, "offset", 0),
              "data": base64.b64encode(x.body).decode(), "mkdirs": x.request.query.get("mkdirs") in ("1", "true")}
    await manager.request(x.session, Method.SANDBOX_WRITE, params)
    return {"written": len(x.body)}


@sandbox_api.post("/set_network", body=NetworkPolicy, answer=JSONObject, gated=True)
async def set_network(x: Exchange[NetworkPolicy]) -> Any:
    """Replace the egress rules of a sandbox created with `network=` (its open connections are cut)."""
    session, sandbox = x.session, x.session.sandbox
    if sandbox is None or not asked_for_network(session.sandbox_request) or session.env.policy.network != "allowlist":
        raise BadRequest("only a sandbox created with a network policy (network=...) can be given another")
    allow = allowlist_update(x.body, x.app[POLICIES].resolve(SANDBOX_POLICY))
    await x.app[BACKEND].replace_allowlist(sandbox.ref, allow)
    return {"allow": list(allow)}


def _run_result(answer: object) -> JSONObject:
    result = _object(answer, "run")
    if not isinstance(result.get("output"), str) or type(result.get("return_code")) is not int \
            or not isinstance(result.get("timed_out"), bool):
        raise SandboxError("the sandbox's agent answered run without output, return_code and timed_out")
    return {"output": result["output"], "return_code": result["return_code"], "timed_out": result["timed_out"]}


def _path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise BadRequest("path must be an absolute path")
    return path


def _number(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 18:
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(text)


def _object(answer: object, what: str) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise SandboxError(f"the sandbox's agent answered {what} with something that is not an object")
    return answer


def _integer(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise SandboxError(f"the sandbox's agent answered {what} without a file size")
    return value


def _decode(value: object, what: str) -> bytes:
    try:
        return base64.b64decode(value if isinstance(value, str) else "\0", validate=True)
    except ValueError:
        raise SandboxError(f"the sandbox's agent answered {what} with data that is not base64") from None

