"""The registry: live sessions by id, recently ended ids (410 with the reason), and admission.

Admission bounds live sessions (server-wide, per environment and per API key: 429), creates per
key per minute (429 with the wait in Retry-After), and queues
sandbox starts (`max_starting` at once, server-wide and per environment), so a
create storm cannot overload the engine.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time

from ..auth import Principal
from ..catalog import EnvironmentInfo
from ..config import Config
from ..errors import SessionExists, SessionGone, SessionNotFound, TooManySessions
from .session import Session


class Registry:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.live: dict[str, Session] = {}
        self.ended: dict[str, tuple[str, float]] = {}  # sid -> (reason, when)
        self.starts = asyncio.Semaphore(config.max_starting)
        self._starts_by_env: dict[str, asyncio.Semaphore] = {}
        self._creates_by_owner: dict[str, collections.deque[float]] = {}

    def admit(self, sid: str, env: EnvironmentInfo, principal: Principal) -> None:
        """Refuse a session that exists already, or one past the server's, the environment's or the key's limit.

        Another key's session id answers 404, as every other route does for it: ids are not revealed.
        """
        if sid in self.live:
            raise SessionExists() if self.live[sid].owner == principal.owner else SessionNotFound()
        self._admit_for_key(principal)
        if len(self.live) >= self.config.max_sessions:
            raise TooManySessions(f"orsbox is at its limit of {self.config.max_sessions} live sessions; retry later")
        limit = env.policy.max_sessions
        if limit is not None and sum(s.env.name == env.name for s in self.live.values()) >= limit:
            raise TooManySessions(f"environment {env.name!r} is at its limit of {limit} live sessions; retry later",
                                  limit="environment")

    def room_for(self, env: EnvironmentInfo, principal: Principal, count: int) -> None:
        """Refuse (429) `count` more sessions of `env` for `principal` past a limit of live sessions."""
        if len(self.live) + count > self.config.max_sessions:
            raise TooManySessions(f"{count} more sessions would pass orsbox's limit of {self.config.max_sessions} "
                                  "live sessions; retry later")
        limit = env.policy.max_sessions
        if limit is not None and sum(s.env.name == env.name for s in self.live.values()) + count > limit:
            raise TooManySessions(f"{count} more sessions would pass environment {env.name!r}'s limit of {limit} "
                                  "live sessions; retry later", limit="environment")
        quota = principal.quota.max_sessions
        if quota is not None and sum(s.owner == principal.owner for s in self.live.values()) + count > quota:
            raise TooManySessions(f"{count} more sessions would pass this API key's limit of {quota} live "
                                  "sessions; end some or retry later", limit="key_sessions")

    def _admit_for_key(self, principal: Principal) -> None:
        quota = principal.quota
        if principal.parent_session is not None:  # an environment's sandboxes: its own limit, then its key's
            owned = sum(s.owner == principal.owner for s in self.live.values())
            if quota.max_sessions is not None and owned >= quota.max_sessions:
                raise TooManySessions(f"this session is at its limit of {quota.max_sessions} sandboxes (its "
                                      "policy's max_sandboxes); stop one or retry later", limit="session_sandboxes")
            if principal.on_behalf_of is not None:
                self._admit_for_key(principal.on_behalf_of)
            return
        owned = sum(s.counts_against == principal.owner for s in self.live.values())  # sandboxes of its sessions too
        if quota.max_sessions is not None and owned >= quota.max_sessions:
            raise TooManySessions(f"this API key is at its limit of {quota.max_sessions} live sessions; "
                                  "end one or retry later", limit="key_sessions")
        if quota.starts_per_minute is not None:
            now = time.monotonic()
            creates = self._creates_by_owner.setdefault(principal.owner, collections.deque())
            while creates and now - creates[0] >= 60:
                creates.popleft()
            if len(creates) >= quota.starts_per_minute:
                error = TooManySessions(f"this API key is at its limit of {quota.starts_per_minute} "
                                        "new sessions per minute; retry later", limit="key_starts")
                error.retry_after = max(1, math.ceil(60 - (now - creates[0])))
                raise error
            creates.append(now)

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

    def get(self, sid: str, owner: str) -> Session:
        """The live session `sid` of `owner`; 410 with the reason if it ended, else 404."""
        session = self.owned(sid, owner)
        if session is None:
            if sid in self.ended and sid not in self.live:
                raise self.gone(sid)
            raise SessionNotFound()
        session.touch()
        return session

    def owned(self, sid: str, owner: str) -> Session | None:
        session = self.live.get(sid)
        return session if session is not None and session.owner == owner else None

    def gone(self, sid: str) -> SessionGone:
        reason = self.ended.get(sid, ("ended",))[0]
        return SessionGone(f"Session ended: {reason}")

    def forget_ended(self, now: float) -> None:
        """Ended ids are remembered `ended_memory` s."""
        for sid, (_, when) in list(self.ended.items()):
            if now - when > self.config.ended_memory:
                del self.ended[sid]
