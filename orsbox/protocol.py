"""ORS wire models: request bodies the server validates, and the shapes it answers with.

Bodies forbid unknown fields and coerce laxly, as the reference server
(FastAPI + pydantic) does: `"index": "1"` is accepted, `1.5` is not.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

JSONObject = dict[str, Any]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitBody(Body):
    split: str


class TaskBody(Body):
    split: str
    index: int


class TaskRangeBody(Body):
    split: str
    start: int | None = None
    stop: int | None = None


class CreateBody(Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [  # the validator below, as JSON Schema
        {"required": ["task_spec"], "properties": {
            "task_spec": {"type": "object"}, "split": {"type": "null"}, "index": {"type": "null"}}},
        {"required": ["split", "index"], "properties": {
            "task_spec": {"type": "null"}, "split": {"type": "string"}, "index": {"type": "integer"}}},
    ]})

    env_name: str | None = None
    task_spec: JSONObject | None = None
    split: str | None = None
    index: int | None = None
    toolset_name: str | None = None

    @model_validator(mode="after")
    def one_way_to_name_the_task(self) -> CreateBody:
        """Exactly one of task_spec or split+index (the reference's checks and messages)."""
        has_spec = self.task_spec is not None
        has_index = self.split is not None and self.index is not None
        if has_spec == has_index:
            raise ValueError("Provide either task_spec or both split and index, not both/neither")
        if (self.split is None) != (self.index is None):
            raise ValueError("split and index must both be provided together")
        return self


class CallBody(Body):
    name: str
    input: JSONObject
    task_id: str | None = None


class ScoreGroupBody(Body):
    candidates: list[Any]
    task_id: str | None = None


class Split(BaseModel):
    name: str
    type: str


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    input_schema: JSONObject | None


def list_tools_answer(tools: list[JSONObject]) -> JSONObject:
    """The ListTools shape the reference answers `/tools` and `/task_tools` with."""
    return {
        "tools": tools,
        "terminal_tool": None,
        "supports_score_group": False,
        "message_block_types": ["text", "image", "reasoning", "tool_call", "tool_result"],
    }


@dataclass(frozen=True)
class Secret:
    """One `X-Secrets` entry: its value, and where the client allows it to be sent (None: anywhere)."""

    value: str
    allowed_domains: tuple[str, ...] | None = None


def parse_secrets(header: str | None) -> dict[str, Secret]:
    """The `X-Secrets` header: base64 of JSON `{"NAME": {"value": "...", "allowed_domains": [...]}}`.

    Raises ValueError with a message that never contains a secret.
    """
    if header is None or not header.strip():
        return {}
    try:
        decoded = json.loads(base64.b64decode(header.strip(), validate=True))
    except (ValueError, binascii.Error, RecursionError):
        raise ValueError("X-Secrets header is not base64-encoded JSON") from None
    if not isinstance(decoded, dict):
        raise ValueError("X-Secrets header must encode a JSON object")
    secrets: dict[str, Secret] = {}
    for name, entry in decoded.items():
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(value, str):
            raise ValueError(f"X-Secrets entry {name[:100]!r} must be an object with a string 'value'")
        domains = entry.get("allowed_domains")
        if domains is not None and not (isinstance(domains, list) and all(isinstance(d, str) for d in domains)):
            raise ValueError(f"X-Secrets entry {name[:100]!r}: allowed_domains must be a list of domain names")
        secrets[name] = Secret(value, None if domains is None else tuple(d.strip().lower() for d in domains))
    return secrets


# ---------------------------------------------------------------- answers (documented in /openapi.json)


class StatusAnswer(BaseModel):
    status: str


class VersionAnswer(BaseModel):
    version: str
    build_sha: str | None


class TextBlock(BaseModel):
    text: str
    detail: JSONObject | None = None
    type: Literal["text"] = "text"


class ImageBlock(BaseModel):
    data: str
    mimeType: str  # noqa: N815 - the ORS field name
    detail: JSONObject | None = None
    type: Literal["image"] = "image"


Blocks = list[TextBlock | ImageBlock]


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    blocks: list[JSONObject]
    detail: JSONObject | None = None


class ListToolsAnswer(BaseModel):
    tools: list[ToolSpec]
    terminal_tool: JSONObject | None = None
    supports_score_group: bool = False
    message_block_types: list[str]


class TasksAnswer(BaseModel):
    tasks: list[JSONObject]
    env_name: str


class NumTasksAnswer(BaseModel):
    num_tasks: int


class TaskAnswer(BaseModel):
    task: JSONObject
    env_name: str


class SidAnswer(BaseModel):
    sid: str


class ForkBody(Body):
    """`POST /fork` (an orsbox extension): how many copies of the session to make."""

    count: int = 1


class ForkAnswer(BaseModel):
    sids: list[str]


class ErrorAnswer(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: JSONObject | None = None


class ValidationErrorAnswer(BaseModel):
    detail: list[ValidationIssue]
