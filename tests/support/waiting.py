"""Waiting in tests for what happens in the background: no sleeps of a guessed length."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def until(check: Callable[[], Any], timeout: float = 20.0) -> None:
    """Wait for `check()` (sync, or returning an awaitable) to be true; TimeoutError after `timeout` s."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)
