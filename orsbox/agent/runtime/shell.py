"""A persistent shell: one long-lived bash per session, as the command user.

The working directory, exported variables, functions and background jobs survive
between calls. Each call is handed to bash as a quoted here-document for `eval`
(so nothing in the command can break the framing), with stdin from /dev/null,
and ends with a marker carrying a per-call random nonce and `$?`. Output is
capped like one-shot commands (head and tail kept). A call that outlives its
timeout kills the shell's whole process group; the next call starts a fresh
shell and says so (`shell_restarted`).

Stdlib only, Python 3.8+.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from typing import Optional

from ..layout import WORKSPACE
from .processes import CommandResult, OutputCapture, Runner, oom_killed_since, oom_kills


class Shell:
    """One persistent bash of `runner`'s command user; calls run one at a time."""

    def __init__(self, runner: Runner, cwd: str = WORKSPACE) -> None:
        self.runner = runner
        self.cwd = cwd
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._lock = asyncio.Lock()
        self._capture: Optional[OutputCapture] = None
        self._marker = b""
        self._done: Optional[asyncio.Future[Optional[int]]] = None
        self._pending = b""
        self._reader: Optional[asyncio.Task[None]] = None
        self._restarted = False

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def run(self, command: str, *, timeout: Optional[float] = None) -> CommandResult:
        """Run `command` in the shell; never raises for what the command does."""
        limit = self.runner.time_limit(timeout)
        async with self._lock:
            restarted = not self.alive and self._restarted
            if not self.alive:
                await self._start()
            result = await self._run(command, limit)
            if restarted:
                result.shell_restarted = True
            return result

    async def restart(self) -> None:
        """Kill the shell and everything in its process group; the next call starts afresh."""
        async with self._lock:
            await self.close()

    async def close(self) -> None:
        """Kill the shell, its jobs and whatever the command user detached from it (setsid, nohup)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        await self.runner.stop_shell(proc)
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    async def _start(self) -> None:
        self._proc = await self.runner.start_shell(self.cwd)
        self._restarted = True
        self._reader = asyncio.ensure_future(self._read(self._proc))

    async def _run(self, command: str, limit: float) -> CommandResult:
        assert self._proc is not None and self._proc.stdin is not None
        started = time.monotonic()
        kills_before = oom_kills()
        self._pending = b""
        nonce = secrets.token_hex(16)
        self._marker = ("\n__orsbox_done_%s__ " % nonce).encode()
        self._capture = OutputCapture(self.runner.limits.output_cap)
        self._done = asyncio.get_running_loop().create_future()
        delimiter = "__orsbox_eof_%s__" % nonce
        # Read the command from a quoted here-document (no expansion; no fork, unlike $(cat <<…)), eval it
        # in this shell so cd/exports persist, then print the marker with its status.
        script = ("IFS= read -r -d '' __orsbox_command <<'%s'\n%s\n%s\n"
                  "eval \"$__orsbox_command\" < /dev/null\n"
                  "printf '\\n__orsbox_done_%s__ %%d\\n' \"$?\"\n") % (delimiter, command, delimiter, nonce)
        try:
            self._proc.stdin.write(script.encode())
            await self._proc.stdin.drain()
            exit_code: Optional[int] = await asyncio.wait_for(asyncio.shield(self._done), timeout=limit)
            timed_out = False
        except asyncio.TimeoutError:
            exit_code, timed_out = -signal.SIGKILL, True
            await self.close()
        except (ConnectionError, OSError):  # the shell ended under the call (`exit`, a kill): its status
            exit_code, timed_out = await self._exit_after_death(), False
        capture = self._capture
        capture.feed(self._pending)  # what was held back while looking for an end marker that never came
        self._pending = b""
        self._capture, self._done = None, None
        return CommandResult(capture.text(), exit_code, timed_out, capture.truncated, time.monotonic() - started,
                             oom_killed_since(kills_before))

    async def _exit_after_death(self) -> Optional[int]:
        """The shell ended during the call (`exit`, a kill): its status, and a fresh shell next time."""
        proc = self._proc
        await self.close()
        return None if proc is None else proc.returncode

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """Feed the current call's capture; find its end marker even across chunk boundaries."""
        assert proc.stdout is not None
        while True:
            data = await proc.stdout.read(65536)
            if not data:
                if self._done is not None and not self._done.done():
                    self._done.set_exception(ConnectionResetError("the shell exited"))
                return
            self._consume(data)

    def _consume(self, data: bytes) -> None:
        if self._capture is None or self._done is None or self._done.done():
            return  # output of background jobs between calls is dropped
        buffer = self._pending + data
        at = buffer.find(self._marker)
        if at < 0:
            keep = len(self._marker) + 16
            self._capture.feed(buffer[:-keep] if len(buffer) > keep else b"")
            self._pending = buffer[-keep:] if len(buffer) > keep else buffer
            return
        end = buffer.find(b"\n", at + len(self._marker))
        if end < 0:
            self._capture.feed(buffer[:at])
            self._pending = buffer[at:]
            return
        self._capture.feed(buffer[:at])
        self._pending = b""
        status = buffer[at + len(self._marker):end].strip()
        self._done.set_result(int(status) if status.lstrip(b"-").isdigit() else None)
