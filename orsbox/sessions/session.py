"""A session as orsbox holds it: plain data, its state and its calls."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field

from ..backends.backend import Sandbox
from ..backends.channel import AgentChannel
from ..catalog import EnvironmentInfo
from ..errors import OrsboxError
from ..protocol import JSONObject
from .forks import Snapshot


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    ENDED = "ended"


@dataclass
class CallRecord:
    """One tool call: its result is kept `result_linger` s after it completes, for reconnects."""

    task_id: str
    result: asyncio.Future[JSONObject]


@dataclass
class Session:
    id: str
    env: EnvironmentInfo
    task: JSONObject
    owner: str  # the Principal's owner: an HMAC naming the API key, never the key
    created: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    state: State = State.STARTING
    error: OrsboxError | None = None
    sandbox_future: asyncio.Future[Sandbox] | None = None  # the backend's start, shielded from cancellation
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set once not STARTING
    calls: dict[str, CallRecord] = field(default_factory=dict)
    running_calls: int = 0
    start_task: asyncio.Task[None] | None = None
    sandbox_request: str | None = None  # an openreward sandbox's request, as labelled on its container (else None)
    sandbox_setup: JSONObject | None = None  # a new sandbox's {"env", "workdir"} for its agent's setup
    end_task: asyncio.Task[None] | None = None
    fork: Snapshot | None = None  # a copy made by /fork: the source's files and state, until its setup took them

    @property
    def sandbox(self) -> Sandbox | None:
        """The started sandbox, once the backend's start succeeded."""
        future = self.sandbox_future
        if future is None or not future.done() or future.cancelled() or future.exception() is not None:
            return None
        return future.result()

    @property
    def channel(self) -> AgentChannel | None:
        sandbox = self.sandbox
        return sandbox.channel if sandbox is not None else None

    @property
    def is_sandbox(self) -> bool:
        """An openreward sandbox (POST /create_sandbox), not an ORS session."""
        return self.sandbox_request is not None

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def idle_for(self, now: float) -> float:
        """Seconds since the client last used a ready session (0 while starting or in a call)."""
        if self.state is not State.READY or self.running_calls:
            return 0.0
        return now - self.last_active

    def log_context(self) -> dict[str, str]:
        return {"session_id": self.id, "env": self.env.name}
