"""Adoption: a restarted orsbox serves again the ready sessions a previous run left running.

State lives in the sandboxes' labels (read by the backend into `Leftover`s) and in
their agents, which report their state in `hello`. Every sandbox of this node that
cannot be served (not a session, stopped, environment gone, past its lifetime,
agent not ready or not answering) is removed; one bad sandbox never stops start-up.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from ..backends.backend import Backend, Leftover, Sandbox
from ..catalog import Catalog, EnvironmentInfo
from ..config import Config
from ..errors import EnvNotFound, OrsboxError
from ..policy import PolicySet
from ..sandbox_api.mapping import SANDBOX_ENVIRONMENT, SANDBOX_POLICY, replan, sandbox_environment
from .binding import Binder, Binding
from .lifecycle import Lifecycle
from .pool import Pool
from .registry import Registry
from .session import Session, State

log = structlog.get_logger()

ADOPT_CONNECT_TIMEOUT = 5.0  # s to reach a left-over sandbox's agent


class Adoption:
    def __init__(self, backend: Backend, catalog: Catalog, registry: Registry, lifecycle: Lifecycle, pool: Pool,
                 binder: Binder, config: Config, policies: PolicySet) -> None:
        self.policies = policies
        self.pool = pool
        self.binder = binder
        self._kept: set[str] = set()  # pool containers the previous run's shutdown left waiting
        self.backend = backend
        self.catalog = catalog
        self.registry = registry
        self.lifecycle = lifecycle
        self.config = config

    async def adopt_or_sweep(self) -> None:
        """Serve again the ready sessions a previous run left; remove every other sandbox of this node, then
        (adoption done, so a folder being adopted is never taken) networks and folders no sandbox has."""
        started = time.monotonic()
        self._kept = self.pool.take_kept()
        leftovers = await self.backend.list_leftovers()
        outcomes = await asyncio.gather(*(self._adopt_or_remove(leftover) for leftover in leftovers))
        await self.backend.remove_orphans(set(self.registry.live) | self.pool.slots())
        if leftovers:
            log.info("adoption_finished", adopted=sum(outcomes), removed=len(outcomes) - sum(outcomes),
                     seconds=round(time.monotonic() - started, 3))

    async def _adopt_or_remove(self, leftover: Leftover) -> bool:
        try:
            reason = "adoption is disabled" if not self.config.adopt else await self._adopt(leftover)
        except Exception as exc:  # one bad sandbox must not stop start-up
            reason = f"adoption failed: {type(exc).__name__}: {str(exc)[:200]}"
        if reason is None:
            return True
        log.warning("container_removed", container=leftover.ref.name, session_id=leftover.session_id, reason=reason)
        await self.backend.remove(leftover.ref)
        return False

    def _environment(self, leftover: Leftover) -> EnvironmentInfo | str:
        """What the left-over sandbox would run if started now, or why nothing would: an ORS environment of
        the catalog, or an openreward sandbox re-planned from its request label under today's policy."""
        if leftover.environment == SANDBOX_ENVIRONMENT and leftover.sandbox_request is not None:
            try:
                plan = replan(leftover.sandbox_request, self.policies.resolve(SANDBOX_POLICY),
                              self.config.image_patterns)
            except (ValueError, OrsboxError) as exc:
                return f"its sandbox request no longer fits: {getattr(exc, 'detail', str(exc))[:300]}"
            return sandbox_environment(plan, leftover.image_id or "", ())
        try:
            return self.catalog.get(leftover.environment or "")
        except EnvNotFound:
            return f"environment {leftover.environment!r} is no longer served"

    async def _adopt(self, leftover: Leftover) -> str | None:
        """Reconnect to a left-over session (or pool) sandbox; the reason it cannot be adopted, or None."""
        if leftover.role not in ("session", "pool") or not leftover.session_id:
            return f"not a session container ({leftover.role})"
        if leftover.role == "session" and not leftover.owner:
            return "it has no owner label"
        if not leftover.running:
            return f"the container is {leftover.status}"
        env = self._environment(leftover)
        if isinstance(env, str):
            return env
        if leftover.policy_digest != env.policy.digest():  # ops' tightened policy must not be undone by a restart
            return (f"its policy changed since it started ({leftover.policy_digest} then, "
                    f"{env.policy.digest()} now)")
        if leftover.image_id != env.image.image_id:
            return f"its environment's image changed since it started (now {env.image.image_id[:19]})"
        if leftover.role == "session" and time.time() - leftover.created > env.policy.max_lifetime:
            return f"past its max lifetime of {env.policy.max_lifetime:.0f} s"
        try:
            sandbox = await self.backend.reattach(leftover, env.policy, timeout=ADOPT_CONNECT_TIMEOUT)
        except OrsboxError as exc:
            return f"it cannot be reattached: {exc.detail}"
        reason = (self._serve_pooled(leftover, env, sandbox) if leftover.role == "pool"
                  else self._serve(leftover.session_id, leftover.owner or "", leftover.created, env, sandbox,
                                   leftover.sandbox_request))
        if reason is not None:
            await sandbox.channel.close()
        return reason

    def _serve_pooled(self, leftover: Leftover, env: EnvironmentInfo, sandbox: Sandbox) -> str | None:
        """A pool container: the session its agent reports a valid binding for, or back into the pool."""
        if sandbox.hello.binding is None:
            if leftover.ref.name not in self._kept:  # it may have served a session whose root now says otherwise
                return "a pool container the previous run did not leave waiting"
            if sandbox.hello.state != "new":
                return f"an unbound pool container whose agent is {sandbox.hello.state!r}"
            return None if self.pool.adopt(env, leftover, sandbox) else "the pool has no room for it"
        binding = Binding.parse(sandbox.hello.binding)
        if binding is None or not self.binder.verify(leftover.ref.name, binding):
            return "its agent reports a binding orsbox did not sign for this container"
        if binding.session_id in self.registry.live:
            return f"session {binding.session_id[:80]!r} is served by another container"
        if time.time() - binding.bound_at > env.policy.max_lifetime:
            return f"past its max lifetime of {env.policy.max_lifetime:.0f} s"
        return self._serve(binding.session_id, binding.owner, binding.bound_at, env, sandbox, None)

    def _serve(self, sid: str, owner: str, created: float, env: EnvironmentInfo, sandbox: Sandbox,
               sandbox_request: str | None) -> str | None:
        """Serve the reattached sandbox again as session `sid` (started at unix time `created`)."""
        if sandbox.hello.state != "ready":
            return f"its agent is {sandbox.hello.state!r}"
        age = time.time() - created
        session = Session(id=sid, env=env, task={}, owner=owner, created=time.monotonic() - age, state=State.READY,
                          sandbox_request=sandbox_request)
        session.sandbox_future = asyncio.get_running_loop().create_future()
        session.sandbox_future.set_result(sandbox)
        session.settled.set()
        self.lifecycle.adopted(session)
        log.info("session_adopted", session_id=session.id, env=env.name, age_seconds=round(age, 1))
        return None
