"""Every task that outlives a request, tracked so that shutdown can end them all (the aiojobs shape)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

from .session import Session


class Tasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], session: Session | None = None) -> asyncio.Task[Any]:
        """A tracked task, with the session's log fields bound."""
        async def run() -> Any:
            if session is not None:
                structlog.contextvars.bind_contextvars(**session.log_context())
            return await coro

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancel every task still running and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
