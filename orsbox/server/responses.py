"""JSON as the reference serializes it: compact, non-ASCII written raw."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=compact_json)
