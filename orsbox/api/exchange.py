"""One request's way into a handler, in the reference's check order, so handlers only do their one call.

JSON decode (422) → `X-Session-ID` (400) → session lookup and readiness for gated
routes (404/410/503/500) → body fields (422) → the handler, which gets an
`Exchange` and returns a model, JSON data, or a stream it wrote itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..auth import Principal
from ..errors import BadRequest, BodyTooLarge, InvalidBody, MissingSessionId
from ..sessions import Session
from .keys import CONFIG, SESSIONS, principal
from .responses import json_response

B = TypeVar("B")

DECODE_OFF_LOOP = 256 * 1024  # bytes of JSON from which a body is decoded in a thread


@dataclass(frozen=True)
class Exchange(Generic[B]):
    """What a handler works with: the request, its validated body, and for gated routes the ready session."""

    request: web.Request
    body: B
    sid: str  # "" on routes without a session
    gated_session: Session | None

    @property
    def app(self) -> web.Application:
        return self.request.app

    @property
    def principal(self) -> Principal:
        return principal(self.request)

    @property
    def owner(self) -> str:
        return principal(self.request).owner

    @property
    def session(self) -> Session:
        assert self.gated_session is not None, "only gated routes have a ready session"
        return self.gated_session


Handler = Callable[[Exchange[Any]], Awaitable[Any]]


def bind(handler: Handler, *, body: type[BaseModel] | None, session: bool, gated: bool,
         max_body: int | None = None, raw_body: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for `handler`: parse, check, call, serialize."""
    async def handle(request: web.Request) -> web.StreamResponse:
        limit = max_body or request.app[CONFIG].max_body_bytes
        raw = await read_json(request, limit) if body is not None else None
        data = await read_body(request, limit) if raw_body else None
        sid = session_id(request) if session else ""
        ready = await request.app[SESSIONS].ready(sid, principal(request).owner) if gated else None
        parsed = validate(body, raw) if body is not None else data
        answer = await handler(Exchange(request, parsed, sid, ready))
        if isinstance(answer, web.StreamResponse):
            return answer
        return json_response(answer.model_dump(mode="json") if isinstance(answer, BaseModel) else answer)

    handle.__name__ = handler.__name__
    handle.__doc__ = handler.__doc__
    return handle


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body's bytes, or 413 as soon as it is known to be longer than `limit`."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON, or 422 shaped as FastAPI's; a large body is decoded off the event loop."""
    if request.content_type not in ("application/json", "") and not request.content_type.endswith("+json"):
        text = (await read_body(request, limit)).decode(errors="replace")
        raise InvalidBody([{"type": "model_attributes_type", "loc": ["body"],
                            "msg": "Input should be a valid dictionary or object to extract fields from",
                            "input": text[:200]}])
    raw = await read_body(request, limit)
    if not raw.strip():
        raise InvalidBody([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}])
    try:
        if len(raw) > DECODE_OFF_LOOP:
            return await asyncio.get_running_loop().run_in_executor(None, json.loads, raw)
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("the request body's JSON is nested too deeply") from None
    except ValueError as exc:
        position = getattr(exc, "pos", 0)
        raise InvalidBody([{"type": "json_invalid", "loc": ["body", position], "msg": "JSON decode error",
                            "input": {}, "ctx": {"error": getattr(exc, "msg", str(exc))}}]) from None


def validate(model: type[BaseModel], data: Any) -> Any:
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
