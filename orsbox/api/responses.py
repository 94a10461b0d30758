"""JSON as the reference serializes it: compact, non-ASCII written raw."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """`Content-Type: application/json` exactly (no charset parameter), as the reference sends it."""
    response = web.Response(body=compact_json(data).encode(), status=status, headers=headers)
    response.content_type = "application/json"
    return response
