"""SessionManager: the one object the routes talk to about sessions.

It composes the registry (ids, admission), the lifecycle (start, end), the calls,
the reaper and adoption, and owns every task that outlives a request, ended in
`close()`. It raises domain errors only.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import structlog

from ..auth import Principal
from ..auth.keyring import server_secret
from ..backends.backend import Backend
from ..catalog import Catalog, EnvironmentInfo
from ..config import Config
from ..errors import BadRequest, ConfigError, NotFound, NotReady, SessionGone, ShuttingDown, TooManySessions
from ..metrics import Metrics
from ..policy import PolicySet
from ..protocol import JSONObject, Secret
from .adoption import Adoption
from .binding import Binder
from .calls import Calls, channel_of
from .events import EventLog
from .forks import take_snapshot
from .lifecycle import Lifecycle
from .pool import Pool
from .reaper import Reaper
from .registry import Registry
from .secrets import OperatorSecrets, resolve, secrets_for_session, unavailable
from .session import CallRecord, Session, State
from .tasks import Tasks

log = structlog.get_logger()

MAX_FORKS = 64  # copies one /fork may ask for


class SessionManager:
    """Owns sessions and every background task of theirs."""

    def __init__(self, backend: Backend, catalog: Catalog, config: Config, policies: PolicySet,
                 metrics: Metrics | None = None) -> None:
        self.metrics = metrics = metrics or Metrics()
        self.catalog = catalog
        self.config = config
        self.tasks = Tasks()
        self.registry = Registry(config)
        self.events = EventLog(inputs=config.event_inputs)
        self.operator_secrets = OperatorSecrets(config.secrets_path)  # a bad file stops start-up here
        self.pool = Pool(backend, self.registry, self.tasks, config, metrics)
        binder = Binder(server_secret(config.state_dir))
        self.lifecycle = Lifecycle(backend, self.registry, self.tasks, config, metrics, self.pool, binder, self.events)
        self.calls = Calls(self.registry, self.tasks, config, metrics, self.events)
        self.reaper = Reaper(backend, self.registry, self.lifecycle, self.pool, config, metrics)
        metrics.watch_sessions(lambda: [(s.env.name, s.state.value) for s in self.registry.live.values()])
        self.adoption = Adoption(backend, catalog, self.registry, self.lifecycle, self.pool, binder, config, policies)
        self._background: list[asyncio.Task[None]] = []
        self._refreshing = asyncio.Lock()

    # -- the manager's own lifecycle ---------------------------------------------

    async def start(self, engine_watch_interval: float) -> None:
        """Adopt or remove what a previous run left, fill the warm pools, then reap and watch the engine in the
        background."""
        self.pool.configure(self.catalog.environments())
        await self.adoption.adopt_or_sweep()
        self.pool.refill_all()
        self._background = [asyncio.create_task(self.reaper.run()),
                            asyncio.create_task(self.reaper.watch_engine(engine_watch_interval)),
                            asyncio.create_task(self._watch_catalog(self.config.catalog_interval))]

    # -- the catalog, read again while serving ---------------------------------------

    async def refresh_catalog(self, reason: str) -> dict[str, list[str]]:
        """Read the environments again (new images served, replaced ones from their new image, removed ones
        gone; live sessions keep what they run), and resize the pools to match."""
        async with self._refreshing:
            changes = await self.catalog.refresh()
            self.pool.reconfigure(self.catalog.environments())
        log.info("catalog_refreshed", reason=reason, **changes)
        return changes

    def refresh_catalog_soon(self, reason: str) -> None:
        """`refresh_catalog` in the background (SIGHUP); a failure is logged."""
        self.tasks.spawn(self._refresh_logged(reason))

    async def _refresh_logged(self, reason: str) -> None:
        try:
            await self.refresh_catalog(reason)
        except Exception as exc:  # a broken engine or dataset must not take the server down
            log.warning("catalog_refresh_failed", reason=reason, error=f"{type(exc).__name__}: {str(exc)[:300]}")

    async def _watch_catalog(self, interval: float) -> None:
        """Every `interval` s, one engine call: when the environment images changed, read the catalog again."""
        while True:
            await asyncio.sleep(interval)
            try:
                changed = self.engine_up and await self.catalog.changed()
            except Exception as exc:
                log.warning("catalog_check_failed", error=f"{type(exc).__name__}: {str(exc)[:300]}")
                continue
            if changed:
                await self._refresh_logged("the engine's environment images changed")

    @property
    def engine_up(self) -> bool:
        return self.reaper.engine_up

    def drain(self) -> None:
        """Refuse new sessions from now on (shutdown has begun); existing ones keep working."""
        self.lifecycle.closing = self.pool.closing = True

    async def close(self, timeout: float) -> None:
        """End every session (sandbox removed) and every background task.

        With `keep_sessions`, ready sessions' sandboxes (and the pools' waiting ones) stay for the next run to adopt.
        """
        self.lifecycle.closing = True
        for task in self._background:
            task.cancel()
        await self.pool.close(keep=self.config.keep_sessions)
        if self.config.keep_sessions:
            await self.lifecycle.let_go()
        ends = [asyncio.ensure_future(self.lifecycle.end(s, "the server shut down"))
                for s in list(self.registry.live.values())]
        if ends:
            _, pending = await asyncio.wait(ends, timeout=timeout)
            for task in pending:
                task.cancel()
        await self.tasks.close()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def sweep(self) -> None:
        await self.reaper.sweep()

    # -- sessions ---------------------------------------------------------------

    def create(self, sid: str, principal: Principal, *, env_name: str | None, split: str | None = None,
               index: int | None = None, task_spec: JSONObject | None = None,
               secrets: dict[str, Secret] | None = None, client_keys: frozenset[str] = frozenset()) -> Session:
        """Register the session and start its sandbox in the background; answers at once.

        The task is `task_spec` if given, else the environment's task at `split`/`index`. Secrets go to
        the environment as far as their `allowed_domains` allow (`client_keys`: those holding the caller's key).
        """
        if self.lifecycle.closing:
            raise ShuttingDown()
        env = self.catalog.get(env_name or self.catalog.default or "")
        if task_spec is not None:
            size = len(json.dumps(task_spec, ensure_ascii=False, separators=(",", ":")).encode())
            if size > self.config.max_task_spec_bytes:
                raise BadRequest(f"task_spec is {size} bytes of JSON; at most {self.config.max_task_spec_bytes}")
        task = task_spec if task_spec is not None else env.task(split or "", index or 0)
        env, task = env.for_task(task)  # a Harbor task: its own image and resources (400 past the policy's caps)
        given = self._secrets(env, principal, secrets_for_session(secrets or {}, env.policy, client_keys=client_keys))
        self._admit(sid, env, principal)
        session = Session(id=sid, env=env, task=dict(task), owner=principal.owner, key_quota=principal.quota)
        self.lifecycle.begin(session, given)
        log.info("session_created", session_id=sid, env=env.name, task_id=task.get("id"), key=principal.key_id)
        self.metrics.created.labels(env.name, "ors").inc()
        self.events.created(session, kind="ors", key=principal.key_id)
        return session

    def _secrets(self, env: EnvironmentInfo, principal: Principal, requested: dict[str, str]) -> dict[str, str]:
        """The request's secrets over the key's over the operator's for `env`; the log names each one's source."""
        try:
            operator = self.operator_secrets.of(env.name)
        except ConfigError as exc:
            raise unavailable(env.name, exc) from None
        given, sources = resolve(requested, dict(principal.secrets), operator)
        if given:
            log.info("secrets_resolved", **{f"from_{source}": sorted(n for n, s in sources.items() if s == source)[:64]
                                            for source in set(sources.values())})
        return given

    def create_sandbox(self, sid: str, principal: Principal, env: EnvironmentInfo, setup: JSONObject,
                       request: str) -> Session:
        """Register an openreward sandbox of `env` (its image and sized policy) and start it in the background."""
        if self.lifecycle.closing:
            raise ShuttingDown()
        if principal.parent_session is not None and principal.parent_session not in self.registry.live:
            raise SessionGone("the session whose environment asks for this sandbox has ended")
        self._admit(sid, env, principal)
        key_owner = principal.on_behalf_of.owner if principal.on_behalf_of is not None else None
        session = Session(id=sid, env=env, task={}, owner=principal.owner, sandbox_setup=setup,
                          sandbox_request=request, key_owner=key_owner)
        self.lifecycle.begin(session, {})
        log.info("sandbox_created", session_id=sid, env=env.name, image=env.image.tags[0][:200], key=principal.key_id)
        self.metrics.created.labels(env.name, "sandbox").inc()
        self.events.created(session, kind="sandbox", key=principal.key_id)
        return session

    async def fork(self, source: Session, principal: Principal, count: int, *,
                   secrets: dict[str, Secret] | None = None, client_keys: frozenset[str] = frozenset()) -> list[str]:
        """`count` new sessions of the ready `source`'s environment and task, whose files and environment state
        are copies of the source's now; they set up in the background, as created ones do."""
        if self.lifecycle.closing:
            raise ShuttingDown()
        if source.is_sandbox:
            raise BadRequest("/fork copies ORS sessions; an openreward sandbox cannot be forked")
        if not 1 <= count <= MAX_FORKS:
            raise BadRequest(f"count must be between 1 and {MAX_FORKS}, not {count}")
        env = source.env
        given = self._secrets(env, principal, secrets_for_session(secrets or {}, env.policy, client_keys=client_keys))
        self.registry.room_for(env, principal, count)
        started = time.monotonic()
        snapshot = await take_snapshot(channel_of(source), env.policy)
        source.touch()
        sids = []
        for _ in range(count):
            sid = str(uuid.uuid4())
            self._admit(sid, env, principal)
            session = Session(id=sid, env=env, task=dict(snapshot.task), owner=principal.owner, fork=snapshot,
                              key_quota=principal.quota)
            self.lifecycle.begin(session, given)
            self.events.created(session, kind="fork", key=principal.key_id)
            self.metrics.created.labels(env.name, "fork").inc()
            sids.append(sid)
        log.info("session_forked", session_id=source.id, env=env.name, copies=sids, bytes=snapshot.size,
                 seconds=round(time.monotonic() - started, 3))
        return sids

    def start_request(self, session: Session, method: str, params: JSONObject, *, label: str) -> CallRecord:
        return self.calls.start_request(session, method, params, label=label)

    async def request(self, session: Session, method: str, params: JSONObject) -> object:
        """One agent request answered at once (a sandbox's file operations)."""
        session.touch()
        return await channel_of(session).call(method, params)

    def _admit(self, sid: str, env: EnvironmentInfo, principal: Principal) -> None:
        try:
            self.registry.admit(sid, env, principal)
        except TooManySessions as exc:
            self.metrics.refused.labels(exc.limit).inc()
            raise

    def get(self, sid: str, owner: str) -> Session:
        """The live session `sid` of `owner`; 410 with the reason if it ended, else 404."""
        return self.registry.get(sid, owner)

    async def ready(self, sid: str, owner: str) -> Session:
        """The session, once set up: waits up to `ready_wait` s, then 503."""
        session = self.registry.get(sid, owner)
        if session.state is State.STARTING:
            try:
                await asyncio.wait_for(session.settled.wait(), self.config.ready_wait)
            except TimeoutError:
                raise NotReady() from None
            session.touch()  # the client waited for it: that is use
        if session.state is State.ENDED:
            raise self.registry.gone(sid)
        if session.state is State.FAILED:
            assert session.error is not None
            raise session.error
        return session

    async def delete(self, sid: str, owner: str) -> None:
        """End the session if it is live and `owner`'s; deleting twice or an unknown id is fine."""
        session = self.registry.owned(sid, owner)
        if session is not None:
            await self.lifecycle.end(session, "deleted by the client")

    async def end_by_operator(self, sid: str, reason: str) -> None:
        """End the live session `sid`, whoever owns it (the admin API); 404 if there is none."""
        session = self.registry.live.get(sid)
        if session is None:
            raise NotFound(f"no live session {sid[:200]!r}")
        await self.lifecycle.end(session, f"ended by the operator: {reason}" if reason else "ended by the operator")

    async def delete_sandbox(self, sid: str, owner: str) -> None:
        """End the openreward sandbox `sid` if it is live and `owner`'s (ORS sessions end by /delete only)."""
        session = self.registry.owned(sid, owner)
        if session is not None and session.is_sandbox:
            await self.lifecycle.end(session, "stopped by the client")

    # -- the episode --------------------------------------------------------------

    async def prompt(self, session: Session) -> list[JSONObject]:
        return await self.calls.prompt(session)

    async def task_tools(self, session: Session) -> JSONObject:
        return await self.calls.task_tools(session)

    def start_call(self, session: Session, name: str, tool_input: JSONObject) -> CallRecord:
        return self.calls.start(session, name, tool_input)

    def find_call(self, session: Session, task_id: str) -> CallRecord | None:
        return self.calls.find(session, task_id)
