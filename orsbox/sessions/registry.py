"""The registry: live sessions by id, recently ended ids (410 with the reason), and admission.

Admission bounds live sessions (server-wide and per environment: 429) and queues
sandbox starts (`max_starting` at once, server-wide and per environment), so a
create storm cannot overload the engine.
"""

from __future__ import annotations

import asyncio
import time

from ..catalog import EnvironmentInfo
from ..config import Config
from ..errors import SessionExists, SessionGone, SessionNotFound, TooManySessions
from .session import Session, owner_of


class Registry:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.live: dict[str, Session] = {}
        self.ended: dict[str, tuple[str, float]] = {}  # sid -> (reason, when)
        self.starts = asyncio.Semaphore(config.max_starting)
        self._starts_by_env: dict[str, asyncio.Semaphore] = {}

    def admit(self, sid: str, env: EnvironmentInfo) -> None:
        """Refuse a session that exists already, or one past the server's or the environment's limit."""
        if sid in self.live:
            raise SessionExists()
        if len(self.live) >= self.config.max_sessions:
            raise TooManySessions(f"orsbox is at its limit of {self.config.max_sessions} live sessions; retry later")
        limit = env.policy.max_sessions
        if limit is not None and sum(s.env.name == env.name for s in self.live.values()) >= limit:
            raise TooManySessions(f"environment {env.name!r} is at its limit of {limit} live sessions; retry later")

    def env_starts(self, env: EnvironmentInfo) -> asyncio.Semaphore:
        """The environment's own limit on sandboxes coming up at once (default: the global one)."""
        if env.name not in self._starts_by_env:
            self._starts_by_env[env.name] = asyncio.Semaphore(env.policy.max_starting or self.config.max_starting)
        return self._starts_by_env[env.name]

    def add(self, session: Session) -> None:
        self.live[session.id] = session
        self.ended.pop(session.id, None)

    def remove(self, session: Session, reason: str) -> None:
        """The session ended: later requests for its id get 410 with `reason`."""
        self.live.pop(session.id, None)
        self.ended[session.id] = (reason, time.monotonic())

    def release(self, session: Session) -> None:
        """Forget a live session without ending it (its container stays for the next run to adopt)."""
        self.live.pop(session.id, None)

    def get(self, sid: str, api_key: str | None) -> Session:
        """The live session `sid` of this API key; 410 with the reason if it ended, else 404."""
        session = self.owned(sid, api_key)
        if session is None:
            if sid in self.ended and sid not in self.live:
                raise self.gone(sid)
            raise SessionNotFound()
        session.touch()
        return session

    def owned(self, sid: str, api_key: str | None) -> Session | None:
        session = self.live.get(sid)
        return session if session is not None and session.owner == owner_of(api_key) else None

    def gone(self, sid: str) -> SessionGone:
        reason = self.ended.get(sid, ("ended",))[0]
        return SessionGone(f"Session ended: {reason}")

    def forget_ended(self, now: float) -> None:
        """Ended ids are remembered `ended_memory` s."""
        for sid, (_, when) in list(self.ended.items()):
            if now - when > self.config.ended_memory:
                del self.ended[sid]
