"""SessionManager: every session's lifecycle, from `/create` to the container's removal.

A session is registered at once on `/create`; a background task creates its
container, connects to the agent and runs `setup`. Gated requests wait for that
(`ready_wait`, then 503). A session ends exactly once, with a reason: deleted,
idle, past its lifetime, agent gone, server shutdown. Ending cancels setup,
runs `teardown` (bounded), removes the container and its folder, and remembers
the id for a while so later requests get 410 with the reason instead of 404.

Every task that outlives a request (setup, tool calls kept for reconnects, the
reaper) is tracked here and ended in `close()`.

State lives in container labels and session folders, so a restarted orsbox
adopts the sessions a previous run left running (`adopt_or_sweep`) and removes
every container it cannot serve. Admission control bounds live sessions (429)
and queues container starts so a create storm cannot overload the engine.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from .agent.wire import PROTOCOL_VERSION, Method
from .backends.backend import (
    LABEL_CREATED,
    LABEL_ENVIRONMENT,
    LABEL_ROLE,
    LABEL_SESSION,
    Backend,
    ManagedContainer,
    Sandbox,
    SandboxSpec,
)
from .backends.channel import AgentChannel
from .catalog import Catalog, EnvironmentInfo
from .config import Config
from .errors import (
    AgentGone,
    EnvNotFound,
    NotReady,
    OrsboxError,
    SessionExists,
    SessionGone,
    SessionNotFound,
    SetupFailed,
    ShuttingDown,
    TooManySessions,
)
from .protocol import CreateBody, JSONObject

log = structlog.get_logger()

OWNER_LABEL = "orsbox.owner"
ADOPT_CONNECT_TIMEOUT = 5.0  # s to reach a left-over container's agent
SWEEP_EVERY = 6  # reaper rounds between orphan sweeps (30 s by default)


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
    owner: str
    created: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    state: State = State.STARTING
    error: OrsboxError | None = None
    sandbox_future: asyncio.Future[Sandbox] | None = None
    channel: AgentChannel | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set once not STARTING
    calls: dict[str, CallRecord] = field(default_factory=dict)
    running_calls: int = 0
    start_task: asyncio.Task[None] | None = None
    end_task: asyncio.Task[None] | None = None

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def log_context(self) -> dict[str, str]:
        return {"session_id": self.id, "env": self.env.name}


def _sandbox_if_created(session: Session) -> Sandbox | None:
    future = session.sandbox_future
    if future is None or not future.done() or future.cancelled() or future.exception() is not None:
        return None
    return future.result()


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def owner_of(api_key: str | None) -> str:
    """Sessions are bound to a hash of the API key that created them (missing = empty)."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:16]


class SessionManager:
    """Owns sessions and every background task of theirs."""

    def __init__(self, backend: Backend, catalog: Catalog, config: Config) -> None:
        self.backend = backend
        self.catalog = catalog
        self.config = config
        self.sessions: dict[str, Session] = {}
        self.ended: dict[str, tuple[str, float]] = {}  # sid -> (reason, when)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._starts = asyncio.Semaphore(config.max_starting)
        self._starts_by_env: dict[str, asyncio.Semaphore] = {}
        self.closing = False
        self.engine_up = True

    # -- lifecycle of the manager ---------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever())

    async def watch_engine(self, interval: float) -> None:
        """Keep `engine_up` current; when the engine comes back, remove what it left behind."""
        while True:
            up = await self.backend.ping()
            if up != self.engine_up:
                log.warning("engine_up" if up else "engine_down")
                self.engine_up = up
                if up:
                    await self.sweep()
            await asyncio.sleep(interval)

    def drain(self) -> None:
        """Refuse new sessions from now on (shutdown has begun); existing ones keep working."""
        self.closing = True

    async def close(self, timeout: float) -> None:
        """End every session (container removed) and every background task.

        With `keep_sessions`, ready sessions' containers stay for the next run to adopt.
        """
        self.closing = True
        if self._reaper is not None:
            self._reaper.cancel()
        if self.config.keep_sessions:
            await self._let_go()
        ends = [self.end(s, "the server shut down") for s in list(self.sessions.values())]
        if ends:
            _, pending = await asyncio.wait([asyncio.ensure_future(e) for e in ends], timeout=timeout)
            for task in pending:
                task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any], session: Session | None = None) -> asyncio.Task[Any]:
        """A tracked task, with the session's log fields bound."""
        async def run() -> Any:
            if session is not None:
                structlog.contextvars.bind_contextvars(**session.log_context())
            return await coro

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _let_go(self) -> None:
        """Disconnect from ready sessions without ending them: their containers wait for adoption."""
        for session in [s for s in self.sessions.values() if s.state is State.READY]:
            self.sessions.pop(session.id, None)
            session.state = State.ENDED  # for this process; the container lives on
            if session.channel is not None:
                await session.channel.close()
            log.info("session_kept_for_adoption", session_id=session.id, env=session.env.name)

    # -- adoption -----------------------------------------------------------------

    async def adopt_or_sweep(self) -> None:
        """Serve again the ready sessions a previous run left; remove every other container of this node."""
        started = time.monotonic()
        containers = await self.backend.list_managed()
        outcomes = await asyncio.gather(*(self._adopt_or_remove(c) for c in containers))
        await self.backend.remove_orphan_networks(set(self.sessions))
        if containers:
            log.info("adoption_finished", adopted=sum(outcomes), removed=len(outcomes) - sum(outcomes),
                     seconds=round(time.monotonic() - started, 3))

    async def _adopt_or_remove(self, container: ManagedContainer) -> bool:
        sandbox = self.backend.sandbox_of(container)
        reason = "adoption is disabled" if not self.config.adopt else await self._adopt(container, sandbox)
        if reason is None:
            return True
        log.warning("container_removed", container=container.name, session_id=container.labels.get(LABEL_SESSION),
                    reason=reason)
        await self.backend.remove(sandbox)
        return False

    async def _adopt(self, container: ManagedContainer, sandbox: Sandbox) -> str | None:
        """Reconnect to a left-over session container; the reason it cannot be adopted, or None."""
        labels = container.labels
        if labels.get(LABEL_ROLE) != "session" or not labels.get(LABEL_SESSION):
            return f"not a session container ({labels.get(LABEL_ROLE)})"
        if container.status != "running":
            return f"the container is {container.status}"
        try:
            env = self.catalog.get(labels.get(LABEL_ENVIRONMENT, ""))
        except EnvNotFound:
            return f"environment {labels.get(LABEL_ENVIRONMENT)!r} is no longer served"
        age = time.time() - float(labels.get(LABEL_CREATED, "0") or 0)
        if age > env.policy.max_lifetime:
            return f"past its max lifetime of {env.policy.max_lifetime:.0f} s"
        try:
            channel = await AgentChannel.connect(sandbox.socket_path, timeout=ADOPT_CONNECT_TIMEOUT,
                                                 is_alive=lambda: self.backend.is_running(sandbox))
            hello = await channel.call(Method.HELLO, timeout=ADOPT_CONNECT_TIMEOUT)
        except OrsboxError as exc:
            return f"its agent does not answer: {exc.detail}"
        if hello.get("protocol") != PROTOCOL_VERSION or hello.get("state") != "ready":
            await channel.close()
            return f"its agent is {hello.get('state')!r} (protocol {hello.get('protocol')})"
        try:
            await self.backend.restore(sandbox, env.policy)  # its firewall rules and egress proxy
        except OrsboxError as exc:
            await channel.close()
            return f"its network cannot be restored: {exc.detail}"
        sid = labels[LABEL_SESSION]
        session = Session(id=sid, env=env, task={}, owner=labels.get(OWNER_LABEL, owner_of(None)),
                          created=time.monotonic() - age, state=State.READY, channel=channel)
        session.sandbox_future = asyncio.get_running_loop().create_future()
        session.sandbox_future.set_result(sandbox)
        session.settled.set()
        channel.on_close(lambda: self._agent_gone(session))
        self.sessions[sid] = session
        self.ended.pop(sid, None)
        log.info("session_adopted", session_id=sid, env=env.name, age_seconds=round(age, 1))
        return None

    # -- create -----------------------------------------------------------------

    def create(self, sid: str, body: CreateBody, secrets: dict[str, str], api_key: str | None) -> Session:
        """Register the session and start its sandbox in the background; answers at once."""
        if self.closing:
            raise ShuttingDown()
        if sid in self.sessions:
            raise SessionExists()
        if len(self.sessions) >= self.config.max_sessions:
            raise TooManySessions(f"orsbox is at its limit of {self.config.max_sessions} live sessions; retry later")
        env = self.catalog.get(body.env_name) if body.env_name else self.catalog.get(self.catalog.default or "")
        self._admit(env)
        task = body.task_spec if body.task_spec is not None else env.task(body.split or "", body.index or 0)
        session = Session(id=sid, env=env, task=dict(task), owner=owner_of(api_key))
        self.sessions[sid] = session
        self.ended.pop(sid, None)
        session.start_task = self._spawn(self._start(session, secrets), session)
        log.info("session_created", session_id=sid, env=env.name, task_id=task.get("id"))
        return session

    def _admit(self, env: EnvironmentInfo) -> None:
        limit = env.policy.max_sessions
        if limit is not None and sum(s.env.name == env.name for s in self.sessions.values()) >= limit:
            raise TooManySessions(f"environment {env.name!r} is at its limit of {limit} live sessions; retry later")

    def _env_starts(self, env: EnvironmentInfo) -> asyncio.Semaphore:
        """The environment's own limit on containers coming up at once (default: the global one)."""
        if env.name not in self._starts_by_env:
            self._starts_by_env[env.name] = asyncio.Semaphore(env.policy.max_starting or self.config.max_starting)
        return self._starts_by_env[env.name]

    async def _start(self, session: Session, secrets: dict[str, str]) -> None:
        policy = session.env.policy
        started = time.monotonic()
        spec = SandboxSpec(session.id, session.env.image, policy, {OWNER_LABEL: session.owner})
        try:
            async with asyncio.timeout(policy.setup_timeout):
                async with self._env_starts(session.env), self._starts:  # bounded starts, queued beyond
                    session.sandbox_future = self._spawn(self.backend.create(spec), session)
                    sandbox = await asyncio.shield(session.sandbox_future)
                    channel = await AgentChannel.connect(
                        sandbox.socket_path, timeout=policy.setup_timeout,
                        is_alive=lambda: self.backend.is_running(sandbox))
                session.channel = channel
                channel.on_close(lambda: self._agent_gone(session))
                hello = await channel.call(Method.HELLO)
                if hello.get("protocol") != PROTOCOL_VERSION:
                    raise SetupFailed(f"the agent speaks protocol {hello.get('protocol')}, orsbox {PROTOCOL_VERSION}")
                await channel.call(Method.SETUP, {"task": session.task, "secrets": secrets})
        except TimeoutError:
            self._fail(session, SetupFailed(f"TimeoutError: setup did not finish within {policy.setup_timeout:.0f} s"))
        except OrsboxError as exc:
            self._fail(session, exc)
        else:
            session.state = State.READY
            log.info("session_ready", seconds=round(time.monotonic() - started, 3))
        finally:
            session.settled.set()

    def _fail(self, session: Session, error: OrsboxError) -> None:
        """Setup failed: the session stays (answering the error) but its sandbox goes now."""
        if session.state is State.ENDED:
            return
        if not isinstance(error, SetupFailed):
            error = SetupFailed(f"{type(error).__name__}: {error.detail}")
        session.state, session.error = State.FAILED, error
        log.warning("session_setup_failed", error=error.detail)
        self._spawn(self._release_sandbox(session), session)

    # -- lookups and the readiness gate -----------------------------------------

    def get(self, sid: str, api_key: str | None) -> Session:
        """The live session `sid` of this API key; 410 with the reason if it ended, else 404."""
        session = self.sessions.get(sid)
        if session is None or session.owner != owner_of(api_key):
            if sid in self.ended and session is None:
                raise self._gone(sid)
            raise SessionNotFound()
        session.touch()
        return session

    def _gone(self, sid: str) -> SessionGone:
        reason = self.ended.get(sid, ("ended",))[0]
        return SessionGone(f"Session ended: {reason}")

    async def ready(self, sid: str, api_key: str | None) -> Session:
        """The session, once set up: waits up to `ready_wait` s, then 503."""
        session = self.get(sid, api_key)
        if session.state is State.STARTING:
            try:
                await asyncio.wait_for(session.settled.wait(), self.config.ready_wait)
            except TimeoutError:
                raise NotReady() from None
        if session.state is State.ENDED:
            raise self._gone(sid)
        if session.state is State.FAILED:
            assert session.error is not None
            raise session.error
        return session

    # -- episode --------------------------------------------------------------------

    async def prompt(self, session: Session) -> list[JSONObject]:
        return list(await self._channel(session).call(Method.PROMPT))

    async def task_tools(self, session: Session) -> JSONObject:
        return dict(await self._channel(session).call(Method.TASK_TOOLS))

    def start_call(self, session: Session, name: str, tool_input: JSONObject) -> CallRecord:
        """Start a tool call that runs to its end even if the client goes away."""
        record = CallRecord(uuid.uuid4().hex, asyncio.get_running_loop().create_future())
        record.result.add_done_callback(_consume)  # a result nobody reconnects for is not an error
        session.calls[record.task_id] = record
        self._spawn(self._run_call(session, record, name, tool_input), session)
        return record

    def find_call(self, session: Session, task_id: str) -> CallRecord | None:
        return session.calls.get(task_id)

    async def _run_call(self, session: Session, record: CallRecord, name: str, tool_input: JSONObject) -> None:
        session.running_calls += 1
        started = time.monotonic()
        try:
            result = await self._channel(session).call(Method.CALL_TOOL, {"name": name, "input": tool_input})
            if session.state is State.ENDED:  # ended under the call: its teardown cut the tool short
                raise self._gone(session.id)
            record.result.set_result(result)
            log.info("tool_called", tool=name, task_id=record.task_id, ok=result.get("ok"),
                     seconds=round(time.monotonic() - started, 3))
        except OrsboxError as exc:
            error = exc if session.state is not State.ENDED else self._gone(session.id)
            record.result.set_exception(error)
            log.warning("tool_call_failed", tool=name, task_id=record.task_id, error=error.detail)
        except asyncio.CancelledError:
            record.result.set_exception(self._gone(session.id))
            raise
        finally:
            session.running_calls -= 1
            session.touch()
            asyncio.get_running_loop().call_later(self.config.result_linger, session.calls.pop, record.task_id, None)

    def _channel(self, session: Session) -> AgentChannel:
        if session.channel is None or session.channel.closed:
            raise AgentGone("the sandbox's agent is gone")
        return session.channel

    # -- ending -----------------------------------------------------------------------

    async def delete(self, sid: str, api_key: str | None) -> None:
        """End the session if it is live and ours; deleting twice or an unknown id is fine."""
        session = self.sessions.get(sid)
        if session is not None and session.owner == owner_of(api_key):
            await self.end(session, "deleted by the client")

    async def end(self, session: Session, reason: str) -> None:
        """End `session` once; concurrent callers wait for the same teardown."""
        if session.end_task is None:
            session.end_task = self._spawn(self._end(session, reason), session)
        await asyncio.shield(session.end_task)

    async def _end(self, session: Session, reason: str) -> None:
        started = time.monotonic()
        was_ready = session.state is State.READY
        session.state = State.ENDED
        self.sessions.pop(session.id, None)
        self.ended[session.id] = (reason, time.monotonic())
        session.settled.set()
        if session.start_task is not None and not session.start_task.done():
            session.start_task.cancel()
        if was_ready and session.channel is not None and not session.channel.closed:
            try:
                await session.channel.call(Method.TEARDOWN, timeout=self.config.teardown_timeout)
            except OrsboxError as exc:
                log.warning("teardown_failed", error=exc.detail)
        await self._release_sandbox(session)
        log.info("session_ended", reason=reason, seconds=round(time.monotonic() - started, 3))

    async def _release_sandbox(self, session: Session) -> None:
        if session.channel is not None:
            await session.channel.close()
        if session.sandbox_future is None:
            return
        try:
            sandbox = await asyncio.shield(session.sandbox_future)
        except (OrsboxError, asyncio.CancelledError):
            return  # create failed and cleaned up after itself
        await self.backend.remove(sandbox)

    def _agent_gone(self, session: Session) -> None:
        if session.state is State.READY and not self.closing:
            log.warning("agent_gone")
            self._spawn(self.end(session, "the sandbox's agent exited (its container died or was killed)"), session)

    # -- reaping ----------------------------------------------------------------------

    async def _reap_forever(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self.config.reap_interval)
            rounds += 1
            try:
                await self.reap()
                if rounds % SWEEP_EVERY == 0 and self.engine_up:
                    await self.sweep()
            except Exception as exc:  # never let one bad round stop reaping
                log.exception("reap_failed", error=str(exc))

    async def sweep(self) -> None:
        """Remove every container of this node that no live session owns (a removal failed, the engine
        restarted under us), then such networks and their firewall rules: whatever happens, none is left behind."""
        owned = {sandbox.container_id for sandbox in map(_sandbox_if_created, self.sessions.values()) if sandbox}
        for container in await self.backend.list_managed():
            sid = container.labels.get(LABEL_SESSION, "")
            if container.container_id in owned or (sid in self.sessions and self.sessions[sid].state is State.STARTING):
                continue
            log.warning("orphan_container_removed", container=container.name, session_id=sid or None)
            await self.backend.remove(self.backend.sandbox_of(container))
        await self.backend.remove_orphan_networks(set(self.sessions))

    async def reap(self) -> None:
        """End idle sessions and those past their lifetime; forget old ended ids."""
        now = time.monotonic()
        for session in list(self.sessions.values()):
            policy = session.env.policy
            idle_limit = self.config.idle_timeout or policy.idle_timeout
            if now - session.created > policy.max_lifetime:
                self._spawn(self.end(session, f"reached its max lifetime of {policy.max_lifetime:.0f} s"), session)
            elif session.running_calls == 0 and now - session.last_active > idle_limit:
                self._spawn(self.end(session, f"idle for more than {idle_limit:.0f} s"), session)
        for sid, (_, when) in list(self.ended.items()):
            if now - when > self.config.ended_memory:
                del self.ended[sid]
