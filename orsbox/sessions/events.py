"""Session events: what happened to each session, kept in bounded rings for operators to replay and follow.

Every event has a server-wide id, increasing by one per event, and a cursor `<run>.<id>` (the run: this
server process's random name), so a reader that reconnects with the last cursor it saw (SSE's
`Last-Event-ID`) gets exactly the events after it, none twice; one whose cursor names an earlier run
(the server restarted: events live in memory) is told that what came after it is gone. Each session
has a ring of its last `per_session` events (kept a while after it ended, for the last
`ended_kept` sessions) and the server one of its last `server_wide`; a reader whose last id was
pushed out of a ring is told how many it lost (`lost`), never silently given a gap.

Events carry names, sizes and durations only: never a tool's input (unless the operator turns
`event_inputs` on, and then truncated) and never a secret or a result.

    created        env, kind (ors | sandbox), task_id, key (the API key's id)
    adopted        env, age (s): served again after a restart
    ready          seconds (create until set up)
    setup_failed   error
    call_started   tool, task_id (input, if event_inputs)
    call_finished  tool, task_id, seconds, ok, output_chars
    call_failed    tool, task_id, error
    timeout        tool, task_id: the call's process hit its time limit
    memory_kill    tool, task_id: the memory killer took one of its processes
    workspace_download / workspace_upload   path, file, bytes (files): a transfer of /workspace files
    ended          reason
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .session import Session

PER_SESSION = 256  # events kept per session
SERVER_WIDE = 4096  # events kept server-wide
ENDED_KEPT = 256  # ended sessions whose events are still kept (at most ~64k events with their live ones' rings)
INPUT_CHARS = 2000  # of a tool input, when event_inputs is on
ERROR_CHARS = 500


@dataclass(frozen=True)
class Event:
    id: int
    time: float  # unix seconds
    session_id: str
    kind: str
    data: dict[str, Any]
    run: str  # the server process's name: ids start again at 1 in another

    @property
    def cursor(self) -> str:
        """What a reader resumes after (SSE's `id:`, then Last-Event-ID)."""
        return f"{self.run}.{self.id}"

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "cursor": self.cursor, "time": round(self.time, 6), "session_id": self.session_id,
                "event": self.kind, "data": self.data}


@dataclass(frozen=True)
class Lost:
    """Events a reader missed: those up to id `until`, `count` of them where known (server-wide ids are
    consecutive; a session's are not, so there it is None), and why."""

    until: int
    count: int | None
    reason: str = "pushed out of the ring before this reader got them"


RESTARTED = "the server restarted since that cursor: events of its earlier run after it are gone"


class Ring:
    """The last `size` events, and how many were pushed out."""

    def __init__(self, size: int) -> None:
        self.events: collections.deque[Event] = collections.deque(maxlen=size)
        self.dropped_until = 0  # id of the newest event pushed out (0: none)
        self.dropped = 0

    def add(self, event: Event) -> None:
        if len(self.events) == self.events.maxlen:
            self.dropped_until, self.dropped = self.events[0].id, self.dropped + 1
        self.events.append(event)

    def after(self, last_id: int) -> list[Event]:
        newer: list[Event] = []
        for event in reversed(self.events):
            if event.id <= last_id:
                break
            newer.append(event)
        newer.reverse()
        return newer


@dataclass
class Trail:
    """One session's events, and what inspect shows of them."""

    ring: Ring
    key: str | None = None
    task_id: str | None = None
    calls: int = 0
    last_call: float | None = None  # unix seconds of the last call's start
    ended: bool = False


class EventLog:
    def __init__(self, *, inputs: bool = False, per_session: int = PER_SESSION, server_wide: int = SERVER_WIDE,
                 ended_kept: int = ENDED_KEPT) -> None:
        self.inputs = inputs
        self.per_session = per_session
        self.ended_kept = ended_kept
        self.server = Ring(server_wide)
        self.trails: dict[str, Trail] = {}
        self._ended: collections.deque[str] = collections.deque()
        self._ids = itertools.count(1)
        self.last_id = 0
        self.run = secrets.token_hex(4)
        self._changed: asyncio.Future[None] | None = None

    # -- emitting (synchronous, microseconds) ----------------------------------------

    def emit(self, session: Session, kind: str, /, **data: Any) -> Event:
        trail = self.trails.get(session.id)
        if trail is None or (kind == "created" and trail.ended):
            trail = self._new_trail(session.id, trail)
        self.last_id = next(self._ids)
        event = Event(self.last_id, time.time(), session.id, kind, data, self.run)
        trail.ring.add(event)
        self.server.add(event)
        if kind == "ended":
            trail.ended = True
            self._ended.append(session.id)
            while len(self._ended) > self.ended_kept:
                gone = self._ended.popleft()
                if self.trails.get(gone) is not None and self.trails[gone].ended:
                    del self.trails[gone]
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None
        return event

    def _new_trail(self, sid: str, before: Trail | None) -> Trail:
        trail = self.trails[sid] = Trail(Ring(self.per_session))
        if before is not None and before.ring.events:  # an id used again: the old events count as lost
            trail.ring.dropped_until = before.ring.events[-1].id
            trail.ring.dropped = before.ring.dropped + len(before.ring.events)
        return trail

    def created(self, session: Session, *, kind: str, key: str) -> None:
        task_id = session.task.get("id") if isinstance(session.task, dict) else None
        self.emit(session, "created", env=session.env.name, kind=kind, key=key,
                  task_id=str(task_id)[:200] if task_id is not None else None)
        trail = self.trails[session.id]
        trail.key, trail.task_id = key, str(task_id)[:200] if task_id is not None else None

    def call_started(self, session: Session, tool: str, task_id: str, params: dict[str, Any]) -> None:
        data: dict[str, Any] = {"tool": tool, "task_id": task_id}
        if self.inputs:
            data["input"] = json.dumps(params.get("input", params), ensure_ascii=False, default=str)[:INPUT_CHARS]
        self.emit(session, "call_started", **data)
        trail = self.trails[session.id]
        trail.calls, trail.last_call = trail.calls + 1, time.time()

    def call_finished(self, session: Session, tool: str, task_id: str, seconds: float, result: dict[str, Any]) -> None:
        metadata = _metadata(result)
        code = metadata.get("exit_code", metadata.get("return_code"))  # an ORS tool's, or a sandbox run's
        ok = result.get("ok", code == 0 if type(code) is int else None)
        self.emit(session, "call_finished", tool=tool, task_id=task_id, seconds=round(seconds, 6),
                  ok=ok if isinstance(ok, bool) else None, output_chars=output_chars(result))
        if metadata.get("timed_out") is True:
            self.emit(session, "timeout", tool=tool, task_id=task_id)
        if metadata.get("oom_killed") is True:
            self.emit(session, "memory_kill", tool=tool, task_id=task_id)

    def call_failed(self, session: Session, tool: str, task_id: str, error: str) -> None:
        self.emit(session, "call_failed", tool=tool, task_id=task_id, error=error[:ERROR_CHARS])

    # -- reading ---------------------------------------------------------------------

    def knows(self, sid: str) -> bool:
        return sid in self.trails

    def position(self, cursor: str) -> tuple[int | None, bool]:
        """(the id a reader resumes after, whether its cursor is of an earlier run) of a Last-Event-ID:
        `<run>.<id>`, or a bare id of this run; ValueError if it is neither."""
        run, dot, number = cursor.strip().rpartition(".")
        if not number.isdigit() or len(number) > 18 or (dot and not run):
            raise ValueError(cursor)
        if dot and run != self.run:
            return None, True
        return int(number), False

    def since(self, sid: str | None, last_id: int | None) -> tuple[Lost | None, list[Event], bool]:
        """(what the reader lost, the events after `last_id`, whether the session has ended) of session `sid`'s
        ring, or the server's (`sid` None); `last_id` None: everything kept, no loss reported."""
        trail = self.trails.get(sid) if sid is not None else None
        ring = trail.ring if trail is not None else self.server
        if sid is not None and trail is None:
            return None, [], True
        events = ring.after(last_id or 0)
        lost = None
        if last_id is not None and last_id < ring.dropped_until:
            lost = Lost(ring.dropped_until, ring.dropped_until - last_id if sid is None else None)
        return lost, events, trail.ended if trail is not None else False

    async def follow(self, sid: str | None, last_id: int | None, keepalive: float, *, live: bool = True,
                     restarted: bool = False) -> AsyncIterator[Event | Lost | None]:
        """The events after `last_id`, then (if `live`) each new one as it comes; None every `keepalive` s
        without one. A session's stream ends after its `ended` event. `restarted`: the reader's cursor was of
        an earlier run, so it hears that first, then everything kept."""
        if restarted:
            yield Lost(0, None, RESTARTED)
        while True:
            lost, events, ended = self.since(sid, last_id)
            if lost is not None:
                yield lost
            for event in events:
                yield event
            if events:
                last_id = events[-1].id
            elif last_id is None:
                last_id = self.last_id
            if ended or not live:
                return
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            done, _ = await asyncio.wait({self._changed}, timeout=keepalive)  # never cancels the shared future
            if not done:
                yield None


def _metadata(result: dict[str, Any]) -> dict[str, Any]:
    """An ORS tool output's metadata, or a sandbox run's result itself."""
    output = result.get("output")
    metadata = output.get("metadata") if isinstance(output, dict) else result
    return metadata if isinstance(metadata, dict) else {}


def output_chars(value: Any, depth: int = 0) -> int:
    """Characters of text in a result (its strings but block types, four levels deep): its size, without
    serializing it."""
    if isinstance(value, str):
        return len(value)
    if depth >= 4:
        return 0
    if isinstance(value, dict):
        return sum(output_chars(item, depth + 1) for key, item in value.items() if key != "type")
    if isinstance(value, list):
        return sum(output_chars(item, depth + 1) for item in value)
    return 0
