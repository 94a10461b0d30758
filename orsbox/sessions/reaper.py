"""The reaper: ends idle sessions and those past their lifetime, sweeps orphans, watches the engine.

Every `reap_interval` s it ends what outlived its policy; every `SWEEP_EVERY`
rounds (and whenever the engine comes back) it removes every sandbox of this node
that no live session owns, then such networks and host folders: whatever failed,
none is left behind.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from ..backends.backend import Backend
from ..config import Config
from ..metrics import Metrics
from .lifecycle import Lifecycle
from .pool import Pool
from .registry import Registry
from .session import State

log = structlog.get_logger()

SWEEP_EVERY = 6  # reaper rounds between orphan sweeps (30 s by default)


class Reaper:
    def __init__(self, backend: Backend, registry: Registry, lifecycle: Lifecycle, pool: Pool, config: Config,
                 metrics: Metrics) -> None:
        self.backend = backend
        self.pool = pool
        self.metrics = metrics
        self.registry = registry
        self.lifecycle = lifecycle
        self.config = config
        self.engine_up = True

    async def run(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self.config.reap_interval)
            rounds += 1
            try:
                self.reap()
                if rounds % SWEEP_EVERY == 0 and self.engine_up:
                    await self.sweep()
            except Exception as exc:  # never let one bad round stop reaping
                log.exception("reap_failed", error=str(exc))

    def reap(self) -> None:
        """End idle sessions and those past their lifetime; forget old ended ids."""
        now = time.monotonic()
        for session in list(self.registry.live.values()):
            policy = session.env.policy
            idle_limit = self.config.idle_timeout or policy.idle_timeout
            if now - session.created > policy.max_lifetime:
                self.lifecycle.end_soon(session, f"reached its max lifetime of {policy.max_lifetime:.0f} s")
            elif session.idle_for(now) > idle_limit:
                self.lifecycle.end_soon(session, f"idle for more than {idle_limit:.0f} s")
        self.registry.forget_ended(now)
        self.pool.tick(now)

    async def sweep(self) -> None:
        """Remove every sandbox of this node that no live session or pool owns, then such networks and folders."""
        leftovers = await self.backend.list_leftovers()
        live = self.registry.live  # read after the listing: a sandbox started meanwhile is owned, not an orphan
        owned = {session.sandbox.ref.id for session in live.values() if session.sandbox is not None}
        owned |= self.pool.sandbox_ids() | self.lifecycle.ending  # pooled, or being removed by their session's end
        pool_slots = self.pool.slots()
        for leftover in leftovers:
            sid = leftover.session_id
            starting = sid is not None and ((sid in live and live[sid].state is State.STARTING) or sid in pool_slots)
            if leftover.ref.id in owned or starting or (leftover.role == "sidecar" and sid in live):
                continue
            log.warning("orphan_container_removed", container=leftover.ref.name, session_id=sid)
            await self.backend.remove(leftover.ref)
        await self.backend.remove_orphans(set(live) | self.pool.slots())

    async def watch_engine(self, interval: float) -> None:
        """Keep `engine_up` current; when the engine comes back, remove what it left behind."""
        while True:
            up = await self.backend.ping()
            if up != self.engine_up:
                log.warning("engine_up" if up else "engine_down")
                self.engine_up = up
                self.metrics.engine_up.set(1 if up else 0)
                if up:
                    await self.sweep()
            await asyncio.sleep(interval)
