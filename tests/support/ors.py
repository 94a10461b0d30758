"""An ORS client for the tests and scripts/bench.py: the requests they make, and `/call`'s SSE answer parsed.

It sends through anything with aiohttp's `.post(path, …)` and `.get(path, …)`: the test client of
`aiohttp_client` (`Ors(client)`), or a `ClientSession` against a running server
(`async with Ors.at("http://127.0.0.1:8080") as ors`). An answer other than the one asked for raises
`UnexpectedAnswer`, an `AssertionError`: a failure in a test, an error the benchmark records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

H = TypeVar("H", bound="Http")


class Ors(Generic[H]):
    """A thin ORS client; `http` is what it sends through (tests also use it for requests of their own)."""

    def __init__(self, http: H) -> None:
        self.http = http

    @staticmethod
    @contextlib.asynccontextmanager
    async def at(base_url: str, **session: Any) -> AsyncIterator[Ors[aiohttp.ClientSession]]:
        """A client of the server at `base_url`, over a `ClientSession(**session)` (connector, timeout) of its own."""
        async with aiohttp.ClientSession(base_url=base_url, **session) as http:
            yield Ors(http)

    async def create_session(self) -> str:
        """A fresh session id from POST /create_session (an SSE answer whose `task_id` event carries it)."""
        response = await self.http.post("/create_session", json={})
        raw = await response.read()
        if response.status != 200:
            raise UnexpectedAnswer(f"/create_session: HTTP {response.status}: {raw.decode(errors='replace')}")
        events = parse_sse(raw)
        sid = next((data for event, data in events if event == "task_id" and data), None)
        if sid is None:
            raise UnexpectedAnswer(f"/create_session: no task_id in {events}")
        return sid

    async def create(self, sid: str, env: str = "bash", **body: Any) -> None:
        """POST /create of the session `sid`; `body` names the task (split and index, or task_spec)."""
        response = await self.http.post("/create", json={"env_name": env, **body}, headers={"X-Session-ID": sid})
        await _expect_sid(response, "/create", sid)

    async def new_session(self, env: str = "bash", **body: Any) -> str:
        """A session of a fresh id on `env`'s task `body` (train 0 unless named)."""
        sid = str(uuid.uuid4())
        if "task_spec" not in body and "split" not in body:
            body.update(split="train", index=0)
        await self.create(sid, env, **body)
        return sid

    async def call(self, sid: str, name: str, tool_input: dict[str, Any] | None = None,
                   env: str = "bash", **extra: Any) -> CallResult:
        """POST /{env}/call, whatever the answer; `extra` are more body fields (task_id)."""
        body = {"name": name, "input": {} if tool_input is None else tool_input, **extra}
        response = await self.http.post(f"/{env}/call", json=body, headers={"X-Session-ID": sid})
        raw = await response.read()
        return CallResult(response.status, parse_sse(raw) if response.status == 200 else [], raw, response.headers)

    async def call_when_ready(self, sid: str, name: str, tool_input: dict[str, Any] | None = None,
                              env: str = "bash", *, timeout: float = 120.0) -> tuple[CallResult, int]:
        """`call`, asked again while the session is starting (the server answers 503 "starting" after a wait of
        its own), within `timeout` seconds: the answer, and how many "starting" answers came before it."""
        retries = 0
        try:
            async with asyncio.timeout(timeout) as deadline:
                while True:
                    answer = await self.call(sid, name, tool_input, env)
                    if not answer.starting:
                        return answer, retries
                    retries += 1
        except TimeoutError:
            if deadline.expired():
                raise TimeoutError(f"/{env}/call {name}: no answer within {timeout:.0f} s "
                                   f"({retries} 'starting' answers)") from None
            raise

    async def bash(self, sid: str, command: str, **tool_input: Any) -> CallResult:
        return await self.call(sid, "bash", {"command": command, **tool_input})

    async def prompt(self, sid: str, env: str = "bash") -> Any:
        response = await self.http.get(f"/{env}/prompt", headers={"X-Session-ID": sid})
        return await _json(response, f"/{env}/prompt")

    async def delete(self, sid: str) -> None:
        response = await self.http.post("/delete", headers={"X-Session-ID": sid})
        await _expect_sid(response, "/delete", sid)


@dataclass
class CallResult:
    """A `/call` answer: its status, its SSE events (if 200) and its body."""

    status: int
    events: list[tuple[str, str]]
    raw: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def starting(self) -> bool:
        """The session is still being set up: ask again."""
        return self.status == 503 and self.headers.get("X-Backend-State") == "starting"

    @property
    def task_id(self) -> str | None:
        return next((data for event, data in self.events if event == "task_id"), None)

    @property
    def result(self) -> dict[str, Any]:
        """The reassembled result JSON (chunks + end)."""
        parts = [data for event, data in self.events if event in ("chunk", "end")]
        if not parts or self.events[-1][0] != "end":
            raise UnexpectedAnswer(f"no end event (HTTP {self.status}): "
                                   f"{self.events or self.raw.decode(errors='replace')}")
        return dict(json.loads("".join(parts)))

    @property
    def output(self) -> dict[str, Any]:
        result = self.result
        if not result["ok"]:
            raise UnexpectedAnswer(f"not ok: {result}")
        return dict(result["output"])

    @property
    def text(self) -> str:
        return "".join(block["text"] for block in self.output["blocks"] if block["type"] == "text")


def parse_sse(raw: bytes) -> list[tuple[str, str]]:
    """Events as (name, data); comments dropped; multiple data lines joined with \\n."""
    events = []
    for block in raw.decode().split("\r\n\r\n"):
        event, data = None, []
        for line in block.split("\r\n"):
            if line.startswith(":") or not line:
                continue
            field_name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field_name == "event":
                event = value
            elif field_name == "data":
                data.append(value)
        if event is not None:
            events.append((event, "\n".join(data)))
    return events


class Http(Protocol):
    """What `Ors` sends through: aiohttp's `TestClient`, or a `ClientSession` made with a `base_url`."""

    def post(self, path: str, /, *, json: Any = ..., headers: Mapping[str, str] = ...
             ) -> Awaitable[aiohttp.ClientResponse]: ...

    def get(self, path: str, /, *, headers: Mapping[str, str] = ...) -> Awaitable[aiohttp.ClientResponse]: ...


class UnexpectedAnswer(AssertionError):
    """An ORS answer other than the one asked for."""


async def _json(response: aiohttp.ClientResponse, what: str) -> Any:
    """The JSON body of a 200 answer."""
    if response.status != 200:
        raise UnexpectedAnswer(f"{what}: HTTP {response.status}: {await response.text()}")
    return await response.json()


async def _expect_sid(response: aiohttp.ClientResponse, what: str, sid: str) -> None:
    answer = await _json(response, what)
    if answer != {"sid": sid}:
        raise UnexpectedAnswer(f"{what}: {answer!r}, not {{'sid': {sid!r}}}")
