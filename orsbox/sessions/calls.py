"""Tool calls and the session's other agent requests.

A tool call runs to its end even if the client goes away; its result is kept
`result_linger` s by `task_id`, so a reconnecting client gets it instead of a rerun.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import structlog

from ..agent.wire import Method
from ..backends.channel import AgentChannel
from ..config import Config
from ..errors import AgentGone, OrsboxError, SandboxError
from ..metrics import Metrics
from ..protocol import JSONObject
from .events import EventLog
from .registry import Registry
from .session import CallRecord, Session, State
from .tasks import Tasks

log = structlog.get_logger()

KEPT_RESULTS = 32  # finished results kept per session for reconnects (the oldest go first past it)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Calls:
    def __init__(self, registry: Registry, tasks: Tasks, config: Config, metrics: Metrics,
                 events: EventLog | None = None) -> None:
        self.events = events or EventLog()
        self.registry = registry
        self.metrics = metrics
        self.tasks = tasks
        self.config = config

    async def prompt(self, session: Session) -> list[JSONObject]:
        blocks = await channel_of(session).call(Method.PROMPT)
        if not isinstance(blocks, list) or not all(isinstance(block, dict) for block in blocks):
            raise SandboxError("the sandbox's agent answered prompt with something that is not a list of blocks")
        return blocks

    async def task_tools(self, session: Session) -> JSONObject:
        answer = await channel_of(session).call(Method.TASK_TOOLS)
        if not isinstance(answer, dict) or not isinstance(answer.get("tools"), list):
            raise SandboxError("the sandbox's agent answered task_tools without a list of tools")
        return answer

    def start(self, session: Session, name: str, tool_input: JSONObject) -> CallRecord:
        """Start a tool call that runs to its end even if the client goes away."""
        known = any(tool.get("name") == name for tool in session.env.tools)
        return self.start_request(session, Method.CALL_TOOL, {"name": name, "input": tool_input},
                                  label=name if known else "other")  # a label of bounded values

    def start_request(self, session: Session, method: str, params: JSONObject, *, label: str) -> CallRecord:
        """Start any agent request the way a tool call runs: to its end, its result kept by `task_id`."""
        record = CallRecord(uuid.uuid4().hex, asyncio.get_running_loop().create_future())
        record.result.add_done_callback(_consume)  # a result nobody reconnects for is not an error
        session.calls[record.task_id] = record
        self.tasks.spawn(self._run(session, record, method, params, label), session)
        return record

    def find(self, session: Session, task_id: str) -> CallRecord | None:
        return session.calls.get(task_id)

    async def _run(self, session: Session, record: CallRecord, method: str, params: JSONObject, name: str) -> None:
        session.running_calls += 1
        started = time.monotonic()
        self.events.call_started(session, name, record.task_id, params)
        try:
            if method == Method.CALL_TOOL and session.env.call_extras is not None:  # a Harbor task's tests
                params = {**params, **await session.env.call_extras(str(params.get("name")))}
            result = await channel_of(session).call(method, params)
            if not isinstance(result, dict):
                raise SandboxError(f"the sandbox's agent answered {name!r} with something that is not an object")
            if session.state is State.ENDED:  # ended under the call: its teardown cut the tool short
                raise self.registry.gone(session.id)
            record.result.set_result(result)
            self.metrics.call_finished(session.env.name, name, time.monotonic() - started, result)
            self.events.call_finished(session, name, record.task_id, time.monotonic() - started, result)
            log.info("tool_called", tool=name, task_id=record.task_id, ok=result.get("ok"),
                     seconds=round(time.monotonic() - started, 3))
        except OrsboxError as exc:
            error = exc if session.state is not State.ENDED else self.registry.gone(session.id)
            record.result.set_exception(error)
            self.events.call_failed(session, name, record.task_id, str(error.detail))
            log.warning("tool_call_failed", tool=name, task_id=record.task_id, error=error.detail)
        except asyncio.CancelledError:
            record.result.set_exception(self.registry.gone(session.id))
            raise
        finally:
            session.running_calls -= 1
            session.touch()
            asyncio.get_running_loop().call_later(self.config.result_linger, session.calls.pop, record.task_id, None)
            _forget_oldest_results(session)


def _forget_oldest_results(session: Session) -> None:
    """At most KEPT_RESULTS finished results stay per session, however fast a client calls."""
    finished = [task_id for task_id, record in session.calls.items() if record.result.done()]
    for task_id in finished[:max(0, len(finished) - KEPT_RESULTS)]:
        del session.calls[task_id]


def channel_of(session: Session) -> AgentChannel:
    channel = session.channel
    if channel is None or channel.closed:
        raise AgentGone("the sandbox's agent is gone")
    return channel
