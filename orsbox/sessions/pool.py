"""The warm pool: containers started ahead, per environment, so that `/create` need not wait for one.

A pool container is started exactly as a session's is (the full hardened profile, its agent connected
and handshaken) but for no session: labelled role `pool` under a slot id of its own. A create takes one
(each is used once, never returned), its setup binds it to the session (`binding`), and a refill starts in
the background. Per environment the pool aims at a target that starts at the policy's `pool_min`, grows by
one (up to `pool_max`) each time a create finds it empty, and shrinks back when a container has waited
`pool_idle` s unused (it is replaced by a fresh one, so none waits longer). Refills stay within admission:
pool containers and live sessions together at most `max_sessions` (server-wide and per environment), the
pool's containers' memory limits at most `pool_memory` in all, and `pool_refill` starts at once per
environment, queued with the sessions' starts. A start that fails backs off before the next.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ..backends.backend import Backend, Leftover, Sandbox, SandboxSpec
from ..catalog import EnvironmentInfo
from ..config import Config
from ..errors import OrsboxError
from ..metrics import Metrics
from .registry import Registry
from .tasks import Tasks

log = structlog.get_logger()

RETRY_PAUSES = (1.0, 2.0, 5.0, 15.0, 60.0)  # s before the pool tries again after consecutive failed starts
KEPT_FILE = "pool-kept.json"  # in the state dir: the containers a shutdown left waiting for the next run


@dataclass
class Warm:
    """A pool container waiting for a session."""

    slot: str
    sandbox: Sandbox
    since: float  # monotonic


@dataclass
class EnvironmentPool:
    env: EnvironmentInfo
    target: int
    ready: collections.deque[Warm] = field(default_factory=collections.deque)
    starting: set[str] = field(default_factory=set)  # slots
    failures: int = 0
    retry_at: float = 0.0  # monotonic

    @property
    def size(self) -> int:
        return len(self.ready) + len(self.starting)


def new_slot() -> str:
    return f"pool-{secrets.token_hex(8)}"


class Pool:
    def __init__(self, backend: Backend, registry: Registry, tasks: Tasks, config: Config, metrics: Metrics) -> None:
        self.backend = backend
        self.registry = registry
        self.tasks = tasks
        self.config = config
        self.metrics = metrics
        self.closing = False
        self._pools: dict[str, EnvironmentPool] = {}
        metrics.watch_pool(lambda: [(p.env.name, len(p.ready), len(p.starting)) for p in self._pools.values()])

    def configure(self, environments: Iterable[EnvironmentInfo]) -> None:
        """Keep pools for the environments whose policy asks for one (filled by `refill_all`)."""
        for env in environments:  # a Harbor dataset's tasks each have an image of their own: not pooled yet
            if env.policy.pool_limit > 0 and env.name not in self._pools and env.per_task is None:
                self._pools[env.name] = EnvironmentPool(env, target=env.policy.pool_min)

    def reconfigure(self, environments: Iterable[EnvironmentInfo]) -> None:
        """The catalog was read again: an environment gone, on a new image or under another policy loses its
        pool (waiting containers removed); new pooled environments get one; all refill."""
        fresh = {env.name: env for env in environments}
        for name, pool in list(self._pools.items()):
            env = fresh.get(name)
            if env is None or env.image.image_id != pool.env.image.image_id or env.policy != pool.env.policy:
                del self._pools[name]
                while pool.ready:
                    self._discard(pool.ready.popleft(), "its environment changed")
        self.configure(fresh.values())
        self.refill_all()

    # -- taking ---------------------------------------------------------------------

    def take(self, env: EnvironmentInfo) -> Sandbox | None:
        """A ready pool container of `env` (now the caller's), or None: start one cold."""
        pool = self._pools.get(env.name)
        if pool is None or self.closing or pool.env.image.image_id != env.image.image_id or env.sidecars:
            return None
        while pool.ready:
            warm = pool.ready.popleft()
            if warm.sandbox.channel.closed:  # its agent went while it waited
                self._discard(warm, "its agent was gone")
                continue
            self.metrics.pool_takes.labels(env.name, "hit").inc()
            self._refill(pool)
            return warm.sandbox
        pool.target = min(pool.target + 1, env.policy.pool_limit)  # demand: keep one more ready
        self.metrics.pool_takes.labels(env.name, "miss").inc()
        self._refill(pool)
        return None

    # -- what the pool holds, for the sweep and admission ------------------------------

    def slots(self) -> set[str]:
        """Every slot id the pool holds or is starting (their containers, networks and folders are in use)."""
        return {w.slot for p in self._pools.values() for w in p.ready} | {
            slot for p in self._pools.values() for slot in p.starting}

    def sandbox_ids(self) -> set[str]:
        return {w.sandbox.ref.id for p in self._pools.values() for w in p.ready}

    def size(self, env_name: str | None = None) -> int:
        return sum(p.size for p in self._pools.values() if env_name is None or p.env.name == env_name)

    # -- refilling ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """The reaper's round: replace containers that waited `pool_idle` s (shrinking the target), refill."""
        for pool in self._pools.values():
            while pool.ready and now - pool.ready[0].since > pool.env.policy.pool_idle:
                self._discard(pool.ready.popleft(), f"unused for {pool.env.policy.pool_idle:.0f} s")
                pool.target = max(pool.target - 1, pool.env.policy.pool_min)
            self._refill(pool)

    def refill_all(self) -> None:
        """Sessions ended: the room they leave may be the pool's again."""
        for pool in self._pools.values():
            self._refill(pool)

    def _refill(self, pool: EnvironmentPool) -> None:
        while (not self.closing and pool.size < pool.target and len(pool.starting) < pool.env.policy.pool_refill
               and time.monotonic() >= pool.retry_at and self._room_for(pool.env)):
            slot = new_slot()
            pool.starting.add(slot)
            self.tasks.spawn(self._start(pool, slot))

    def _room_for(self, env: EnvironmentInfo) -> bool:
        live = self.registry.live.values()
        if len(self.registry.live) + self.size() >= self.config.max_sessions:
            return False
        limit = env.policy.max_sessions
        if limit is not None and sum(s.env.name == env.name for s in live) + self.size(env.name) >= limit:
            return False
        held = sum(p.env.policy.memory * p.size for p in self._pools.values())
        return held + env.policy.memory <= self.config.pool_memory

    async def _start(self, pool: EnvironmentPool, slot: str) -> None:
        env = pool.env
        spec = SandboxSpec(slot, env.image, env.policy, owner="", pooled=True)
        structlog.contextvars.bind_contextvars(env=env.name, slot=slot)
        try:
            async with self.registry.env_starts(env), self.registry.starts:
                sandbox = await self.backend.start(spec, timeout=env.policy.setup_timeout)
        except OrsboxError as exc:
            pool.failures += 1
            pause = RETRY_PAUSES[min(pool.failures, len(RETRY_PAUSES)) - 1]
            pool.retry_at = time.monotonic() + pause
            log.warning("pool_start_failed", error=exc.detail[:500], retry_in=pause)
            return
        finally:
            pool.starting.discard(slot)
        pool.failures = 0
        if self.closing or self._pools.get(env.name) is not pool:  # shutting down, or its environment changed
            await self._remove(sandbox)
            return
        self._add(pool, Warm(slot, sandbox, time.monotonic()))
        log.info("pool_container_ready", ready=len(pool.ready))
        self._refill(pool)

    def _add(self, pool: EnvironmentPool, warm: Warm) -> None:
        pool.ready.append(warm)
        warm.sandbox.channel.on_close(lambda: self._agent_gone(pool, warm))

    def _agent_gone(self, pool: EnvironmentPool, warm: Warm) -> None:
        if warm in pool.ready and not self.closing:
            pool.ready.remove(warm)
            self._discard(warm, "its agent was gone")
            self._refill(pool)

    def _discard(self, warm: Warm, reason: str) -> None:
        log.info("pool_container_removed", slot=warm.slot, reason=reason)
        self.tasks.spawn(self._remove(warm.sandbox))

    async def _remove(self, sandbox: Sandbox) -> None:
        await sandbox.channel.close()
        await self.backend.remove(sandbox.ref)

    # -- restarts -------------------------------------------------------------------------

    def take_kept(self) -> set[str]:
        """The containers the previous run left waiting (`close(keep=True)`), read once: only those may come
        back into a pool. An agent's word that it never served a session is no proof (a session with root in
        its container could say so), and after a crash nothing is listed, so the pool starts afresh."""
        try:
            data = json.loads(self._kept_file.read_text())
            self._kept_file.unlink()
        except (OSError, ValueError):
            return set()
        names = data.get("containers") if isinstance(data, dict) else None
        return {name for name in names if isinstance(name, str)} if isinstance(names, list) else set()

    def adopt(self, env: EnvironmentInfo, leftover: Leftover, sandbox: Sandbox) -> bool:
        """Take back an unbound pool container a previous run kept; False where this pool has no room for it."""
        pool = self._pools.get(env.name)
        if pool is None or self.closing or pool.size >= pool.env.policy.pool_limit or not self._room_for(env):
            return False
        self._add(pool, Warm(leftover.session_id or new_slot(), sandbox, time.monotonic()))
        pool.target = max(pool.target, pool.size)
        return True

    async def close(self, *, keep: bool) -> None:
        """Stop refilling; remove every waiting container, or (`keep`) leave them for the next run to adopt,
        listed in the state dir (which no container can reach) as never having served a session."""
        self.closing = True
        waiting = [w for p in self._pools.values() for w in p.ready]
        for pool in self._pools.values():
            pool.ready.clear()
        if keep:
            write_private(self._kept_file, json.dumps({"containers": [w.sandbox.ref.name for w in waiting]}))
            for warm in waiting:
                await warm.sandbox.channel.close()
            return
        await asyncio.gather(*(self._remove(w.sandbox) for w in waiting))

    @property
    def _kept_file(self) -> Path:
        return self.config.state_dir / KEPT_FILE


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the server only."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    tmp.replace(path)
