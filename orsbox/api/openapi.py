"""The API description: each route registers with the models it reads and answers,
and `/openapi.json` is generated from those same pydantic models.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from ..protocol import ErrorAnswer, ValidationErrorAnswer
from .exchange import Handler, bind

REF_TEMPLATE = "#/components/schemas/{model}"
API_KEY_SCHEME = "ApiKey"
SSE = "text/event-stream"
GATED = (404, 410, 500, 502, 503)  # what waiting for a session's readiness can answer
SSE_EVENT = {  # one event of a stream (schemathesis checks each)
    "type": "object",
    "required": ["event", "data"],
    "properties": {"event": {"enum": ["task_id", "chunk", "end", "error"]}, "data": {"type": "string"}},
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    body: type[BaseModel] | None
    answer: Any  # a type pydantic can describe, or SSE
    session: bool  # needs X-Session-ID
    errors: tuple[int, ...]


class Api:
    """A RouteTableDef that remembers what each route reads and answers."""

    def __init__(self) -> None:
        self.routes = web.RouteTableDef()
        self.operations: list[Operation] = []
        self.public_paths: set[str] = set()  # served without an API key

    def route(self, method: str, path: str, *, body: type[BaseModel] | None = None, answer: Any = None,
              session: bool = False, gated: bool = False, public: bool = False,
              errors: tuple[int, ...] = (), max_body: int | None = None,
              raw_body: bool = False) -> Callable[[Handler], Handler]:
        """Register `handler` at `path`: the one place its body model is named (`gated`: needs a ready session;
        `public`: served without an API key; `max_body`: its own body limit in bytes, instead of the
        server's `max_body_bytes`; `raw_body`: the handler gets the body's bytes)."""
        def register(handler: Handler) -> Handler:
            statuses = {*errors, *((422,) if body else ()), *((400,) if session or gated else ())}
            statuses |= set() if public else {401}
            if public:
                self.public_paths.add(path)
            statuses |= set(GATED) if gated else set()
            self.operations.append(Operation(method, path, handler, body, answer, session or gated,
                                             tuple(sorted(statuses))))
            self.routes.route(method, path)(bind(handler, body=body, session=session or gated, gated=gated,
                                                 max_body=max_body, raw_body=raw_body))
            return handler

        return register

    def get(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kwargs)


def openapi_document(api: Api, *, title: str, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for every route of `api`."""
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for op in api.operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "ORS (Open Reward Standard) server running each session in its own container."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        "security": [{API_KEY_SCHEME: []}],
    }


def _operation(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    doc = inspect.getdoc(op.handler) or op.handler.__name__.replace("_", " ")
    summary, _, description = doc.partition("\n")
    operation: dict[str, Any] = {"operationId": op.handler.__name__, "summary": summary.strip()}
    if 401 not in op.errors:
        operation["security"] = []  # public
    if description.strip():
        operation["description"] = description.strip()
    parameters = []
    if "{env}" in op.path:
        parameters.append({"name": "env", "in": "path", "required": True, "schema": {"type": "string"},
                           "description": "environment name (case-insensitive)"})
    if op.session:
        parameters.append({"name": "X-Session-ID", "in": "header", "required": True,
                           "schema": {"type": "string", "minLength": 1}})
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _schema(op.body, schemas)}}}
    operation["responses"] = {"200": _answer(op.answer, schemas)}
    for status in op.errors:
        model = ValidationErrorAnswer if status == 422 else ErrorAnswer
        operation["responses"][str(status)] = {
            "description": _REASONS.get(status, "error"),
            "content": {"application/json": {"schema": _schema(model, schemas)}}}
    return operation


def _answer(answer: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    if answer == SSE:
        return {"description": "Server-Sent Events", "content": {SSE: {"schema": SSE_EVENT}}}
    return {"description": "OK", "content": {"application/json": {"schema": _schema(answer, schemas)}}}


def _schema(kind: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(kind).json_schema(ref_template=REF_TEMPLATE, mode="serialization")
    schemas.update(schema.pop("$defs", {}))
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        schemas[kind.__name__] = schema
        return {"$ref": REF_TEMPLATE.format(model=kind.__name__)}
    return schema


_REASONS = {
    400: "bad request", 401: "no valid X-API-Key", 404: "not found", 410: "session ended", 422: "invalid body",
    500: "setup or environment failed", 502: "the sandbox's agent is gone", 503: "still starting (Retry-After)",
}
