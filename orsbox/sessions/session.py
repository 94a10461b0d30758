"""A session as orsbox holds it: plain data, its state and its calls."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from dataclasses import dataclass, field

from ..auth import Quota
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
    key_owner: str | None = None  # the API key's owner a sandbox of an environment counts against (else: owner)
    key_quota: Quota | None = None  # an ORS session's: the quota of the key that created it
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

    @property
    def counts_against(self) -> str:
        """The owner whose key quota this session counts against."""
        return self.key_owner or self.owner

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def idle_for(self, now: float) -> float:
        """Seconds since the client last used a ready session (0 while starting or in a call)."""
        if self.state is not State.READY or self.running_calls:
            return 0.0
        return now - self.last_active

    def log_context(self) -> dict[str, str]:
        return {"session_id": self.id, "env": self.env.name}


def sandbox_owner(owner: str, sid: str) -> str:
    """The owner of the sandboxes the environment of session `sid` (of `owner`) creates: no API key's
    owner (those are HMACs of keys under the server's secret), and no other session's."""
    return "s" + hashlib.sha256(f"{owner}/{sid}".encode()).hexdigest()[:31]
