"""Server-Sent Events exactly as the ORS reference frames them.

`event: X\r\ndata: Y\r\n\r\n`, a `: ping - <UTC time>` comment every `keepalive`
seconds while waiting, and results longer than 4096 characters split into
`chunk` events with the last part in `end`. The official client `lstrip()`s
every data value, so no chunk may start (or end) with a whitespace character.
"""

from __future__ import annotations

import asyncio
import datetime
import re
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..errors import OrsboxError
from ..protocol import JSONObject
from ..sessions import CallRecord
from .responses import compact_json

CHUNK_CHARS = 4096
T = TypeVar("T")

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def split_for_sse(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Split `text` into parts of at most `size` characters that neither start nor end with whitespace.

    `text` is compact JSON, where whitespace only occurs inside strings; if no
    clean boundary exists (a whitespace run longer than a chunk), whitespace is
    written as JSON escapes, which decode to the same value.
    """
    parts = _split_clean(text, size)
    if parts is not None:
        return parts
    escaped = "".join(f"\\u{ord(c):04x}" if c.isspace() else c for c in text)
    return [escaped[i:i + size] for i in range(0, len(escaped), size)] or [""]


def _split_clean(text: str, size: int) -> list[str] | None:
    parts: list[str] = []
    start = 0
    while len(text) - start > size:
        cut = start + size
        while cut > start and (text[cut - 1].isspace() or text[cut].isspace()):
            cut -= 1
        if cut == start:
            return None
        parts.append(text[start:cut])
        start = cut
    parts.append(text[start:])
    if len(parts) > 1 and (parts[-1][:1].isspace() or parts[-1][-1:].isspace()):
        return None
    return parts


class EventStream:
    """One SSE response."""

    def __init__(self, request: web.Request, keepalive: float, write_timeout: float) -> None:
        self.request = request
        self.keepalive = keepalive
        self.write_timeout = write_timeout
        self.response = web.StreamResponse(status=200, headers=HEADERS)
        self.response.enable_chunked_encoding()

    async def open(self) -> None:
        await self.response.prepare(self.request)

    async def send(self, event: str, data: str, *, event_id: str | None = None) -> None:
        """One event (with an `id:` line if `event_id` is given, which a reconnecting client sends back as
        Last-Event-ID); data with line breaks goes as several `data:` lines (clients join them with \\n)."""
        lines = "".join(f"data: {line}\r\n" for line in re.split(r"\r\n|\r|\n", data))
        head = f"id: {event_id}\r\n" if event_id is not None else ""
        await self._write(f"{head}event: {event}\r\n{lines}\r\n".encode())

    async def ping(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        await self._write(f": ping - {now}\r\n\r\n".encode())

    async def _write(self, data: bytes) -> None:
        """Write, or give up on a reader that stalls for `write_timeout` s: its connection is dropped."""
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.response.write(data)
        except TimeoutError:
            if self.request.transport is not None:
                self.request.transport.abort()
            raise ConnectionResetError(f"the client read nothing for {self.write_timeout:.0f} s") from None

    async def send_result(self, result: Any) -> None:
        """The result JSON as `chunk`* + `end`."""
        *chunks, last = split_for_sse(compact_json(result))
        for chunk in chunks:
            await self.send("chunk", chunk)
        await self.send("end", last)

    async def wait(self, future: asyncio.Future[T]) -> T:
        """Wait for `future`, sending a keepalive comment every `keepalive` s meanwhile."""
        while True:
            done, _ = await asyncio.wait({future}, timeout=self.keepalive)
            if done:
                return future.result()
            await self.ping()

    async def close(self) -> web.StreamResponse:
        await self.response.write_eof()
        return self.response


async def stream_call(stream: EventStream, record: CallRecord | None, *, unknown: str,
                      answer: Callable[[JSONObject], JSONObject] = lambda result: result) -> web.StreamResponse:
    """A call's SSE answer: `task_id` first, keepalives while it runs, then `answer(result)` or an `error`.

    `record` None (a `task_id` this session does not know) answers the `unknown` error. A client that
    leaves does not stop the call: it runs on, kept for a reconnect by its `task_id`.
    """
    try:
        await stream.open()
        if record is None:
            await stream.send("error", unknown)
            return await stream.close()
        await stream.send("task_id", record.task_id)
        try:
            result = answer(await stream.wait(record.result))
        except OrsboxError as exc:
            await stream.send("error", str(exc.detail))
        else:
            await stream.send_result(result)
        return await stream.close()
    except ConnectionResetError:
        return stream.response
