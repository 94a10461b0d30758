"""A session's life: its sandbox started and set up, then ended exactly once, with a reason.

Starting runs in the background: the session takes a warm container from the pool
(`pool`) where its environment has one, else the backend starts a sandbox (queued by
admission) and hands back its handshaken agent channel; then the environment's
`setup` runs (binding a pool container to the session). Ending cancels a start still running, runs `teardown` (bounded),
and removes the sandbox; a start that was cut short is removed when it finishes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from ..agent.wire import SESSION_API, Method
from ..backends.backend import Backend, Sandbox, SandboxSpec
from ..backends.channel import AgentChannel
from ..config import Config
from ..errors import OrsboxError, SetupFailed
from ..metrics import Metrics
from .binding import Binder
from .events import EventLog
from .forks import give_snapshot
from .pool import Pool
from .registry import Registry
from .session import Session, State, sandbox_owner
from .tasks import Tasks

log = structlog.get_logger()


class Lifecycle:
    def __init__(self, backend: Backend, registry: Registry, tasks: Tasks, config: Config, metrics: Metrics,
                 pool: Pool, binder: Binder, events: EventLog | None = None) -> None:
        self.events = events or EventLog()
        self.backend = backend
        self.pool = pool
        self.binder = binder
        self.metrics = metrics
        self.registry = registry
        self.tasks = tasks
        self.config = config
        self.closing = False  # shutdown has begun: agents dying now are not reported as gone
        self.ending: set[str] = set()  # sandboxes (ref ids) of sessions being ended: not orphans to the sweep
        # Serves the sandbox API to a session's environment over its channel; gives the key (sandbox_api/forwarding.py).
        self.session_api: Callable[[Session, AgentChannel], str] | None = None

    def begin(self, session: Session, secrets: dict[str, str]) -> None:
        """Register `session` and start its sandbox in the background."""
        self.registry.add(session)
        session.start_task = self.tasks.spawn(self._start(session, secrets), session)

    async def _start(self, session: Session, secrets: dict[str, str]) -> None:
        policy = session.env.policy
        started = time.monotonic()
        try:
            async with asyncio.timeout(policy.setup_timeout):
                sandbox, binding = self._from_pool(session), None
                if sandbox is not None:  # a pool container: bound to the session by its setup
                    binding = self.binder.bind(sandbox.ref.name, session.id, session.owner).to_json()
                else:
                    sandbox = await self._start_cold(session)
                sandbox.channel.on_close(lambda: self._agent_gone(session))
                params: dict[str, object] = {"task": session.task, "secrets": secrets}
                if session.sandbox_setup is not None:
                    params["sandbox"] = session.sandbox_setup
                token = self._link_session_api(session, sandbox.channel)
                if token is not None:
                    params[SESSION_API] = {"token": token}
                if binding is not None:
                    params["binding"] = binding
                if session.fork is not None:  # a copy: the source's task, files and state
                    params["task"] = session.fork.task
                    params["fork"] = await give_snapshot(sandbox.channel, session.fork, policy)
                await sandbox.channel.call(Method.SETUP, params)
            session.task, session.fork = {}, None  # the agent holds them now: not kept in the server's memory
        except TimeoutError:
            self._fail(session, SetupFailed(f"TimeoutError: setup did not finish within {policy.setup_timeout:.0f} s"))
        except OrsboxError as exc:
            self._fail(session, exc)
        else:
            session.state = State.READY
            session.touch()  # the idle clock starts when the session can be used
            log.info("session_ready", seconds=round(time.monotonic() - started, 3), pooled=binding is not None)
            self.events.emit(session, "ready", seconds=round(time.monotonic() - started, 3))
            self.metrics.setup.labels(session.env.name).observe(time.monotonic() - started)
        finally:
            session.settled.set()

    def _from_pool(self, session: Session) -> Sandbox | None:
        """A warm container for an ORS session of a pooled environment (openreward sandboxes start cold)."""
        if session.is_sandbox:
            return None
        sandbox = self.pool.take(session.env)
        if sandbox is not None:
            future: asyncio.Future[Sandbox] = asyncio.get_running_loop().create_future()
            future.set_result(sandbox)
            session.sandbox_future = future
        return sandbox

    async def _start_cold(self, session: Session) -> Sandbox:
        policy = session.env.policy
        spec = SandboxSpec(session.id, session.env.image, policy, session.owner, session.sandbox_request,
                           sidecars=session.env.sidecars)
        async with self.registry.env_starts(session.env), self.registry.starts:  # queued beyond the limits
            session.sandbox_future = self.tasks.spawn(self.backend.start(spec, timeout=policy.setup_timeout), session)
            starting = time.monotonic()
            sandbox: Sandbox = await asyncio.shield(session.sandbox_future)
            self.metrics.container_start.labels(session.env.name).observe(time.monotonic() - starting)
        return sandbox

    def _fail(self, session: Session, error: OrsboxError) -> None:
        """Setup failed: the session stays (answering the error) but its sandbox goes now."""
        if session.state is State.ENDED:
            return
        if not isinstance(error, SetupFailed):
            error = SetupFailed(f"{type(error).__name__}: {error.detail}")
        session.state, session.error = State.FAILED, error
        log.warning("session_setup_failed", error=error.detail)
        self.events.emit(session, "setup_failed", error=str(error.detail)[:500])
        self.tasks.spawn(self._release(session), session)

    def adopted(self, session: Session) -> None:
        """A session adopted from a previous run: registered, and ended if its agent goes."""
        assert session.channel is not None
        session.channel.on_close(lambda: self._agent_gone(session))
        self._link_session_api(session, session.channel)
        self.registry.add(session)
        self.events.emit(session, "adopted", env=session.env.name, age=round(time.monotonic() - session.created, 1))

    def _link_session_api(self, session: Session, channel: AgentChannel) -> str | None:
        """The environment's key for the sandbox API, if its policy gives it sandboxes (else None)."""
        if self.session_api is None or session.is_sandbox or not session.env.policy.max_sandboxes:
            return None
        return self.session_api(session, channel)

    async def end(self, session: Session, reason: str) -> None:
        """End `session` once; concurrent callers wait for the same teardown."""
        if session.end_task is None:
            session.end_task = self.tasks.spawn(self._end(session, reason), session)
        await asyncio.shield(session.end_task)

    def end_soon(self, session: Session, reason: str) -> None:
        self.tasks.spawn(self.end(session, reason), session)

    async def _end(self, session: Session, reason: str) -> None:
        started = time.monotonic()
        was_ready = session.state is State.READY
        if session.sandbox is not None:
            self.ending.add(session.sandbox.ref.id)
        session.state = State.ENDED
        self.registry.remove(session, reason)
        session.settled.set()
        if session.start_task is not None and not session.start_task.done():
            session.start_task.cancel()
        channel = session.channel
        if was_ready and channel is not None and not channel.closed:
            try:
                await channel.call(Method.TEARDOWN, timeout=self.config.teardown_timeout)
            except OrsboxError as exc:
                log.warning("teardown_failed", error=exc.detail)
        owner = sandbox_owner(session.owner, session.id)  # the sandboxes its environment made end with it
        await asyncio.gather(*(self.end(s, "the session that made it ended")
                               for s in list(self.registry.live.values()) if s.owner == owner))
        await self._release(session)
        self.pool.refill_all()  # the room it leaves may be the pool's again
        log.info("session_ended", reason=reason, seconds=round(time.monotonic() - started, 3))
        self.metrics.session_ended(session.env.name, reason)
        self.events.emit(session, "ended", reason=reason[:500])

    async def _release(self, session: Session) -> None:
        """Remove the session's sandbox, once its start (if one is still running) has finished."""
        if session.sandbox_future is None:
            return
        try:
            sandbox = await asyncio.shield(session.sandbox_future)
        except (OrsboxError, asyncio.CancelledError):
            return  # the start failed and removed what it had made
        self.ending.add(sandbox.ref.id)
        try:
            await sandbox.channel.close()
            removing = time.monotonic()
            await self.backend.remove(sandbox.ref)
            self.metrics.container_remove.labels(session.env.name).observe(time.monotonic() - removing)
        finally:
            self.ending.discard(sandbox.ref.id)

    async def let_go(self) -> None:
        """Disconnect from ready sessions without ending them: their sandboxes wait for adoption."""
        for session in [s for s in self.registry.live.values() if s.state is State.READY]:
            self.registry.release(session)
            session.state = State.ENDED  # for this process; the sandbox lives on
            if session.channel is not None:
                await session.channel.close()
            log.info("session_kept_for_adoption", session_id=session.id, env=session.env.name)

    def _agent_gone(self, session: Session) -> None:
        channel = session.channel
        if session.state is State.READY and not self.closing and channel is not None:
            log.warning("agent_gone", reason=channel.gone_reason)
            self.end_soon(session, channel.gone_reason)
