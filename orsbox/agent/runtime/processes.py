"""Running programs as another uid, bounded in time and output: every process the agent starts, starts here.

Runs inside the container as part of the agent (root with only SETUID, SETGID and KILL, and an
empty capability bounding set: `capabilities.py`).
`RUNNER`, the agent's one `Runner`, holds the session's limits (the policy's, given once at
start by `--limits`) and runs:

- commands (`run_command`): bash as the command user (uid 1000 by default) with a clean
  environment and `oom_score_adj` 1000 (set by `oom_first.sh`), so the memory killer takes it
  before the agent. Its output is capped: the head and the tail are kept, `truncated` set, and
  the agent never holds more than the cap in memory. It is reported as `oom_killed` when the
  memory killer killed any of its processes, read from the container's own cgroup counter
  before and after it (Docker's OOMKilled flag only covers the container's main process);
  where the counter cannot be read, nothing is reported rather than guessed;
- programs (`run_program`): any argv as any uid/gid, with stdin, a timeout and capped
  stdout/stderr (the grading helpers: files across the uid boundary, hidden tests);
- the persistent shells of `shell.py` (`start_shell`, `stop_shell`) and the short file
  operations of the file tools (`run_helper`), as the command user.

Commands and programs run in their own session and process group, with no supplementary
groups. One that outlives its timeout is killed with its whole process group, its partial
output kept and `timed_out` set. Nothing is left behind: once it ends, every process of its
uid is killed (background jobs, daemons that called setsid; the command user's persistent
shells spared), so the commands and programs of one uid run one at a time.

Nothing but the drop to the uid runs in a forked child before its exec: Python 3.9+ does it in C
(`user=`, `group=`, `extra_groups=[]`), 3.8 in a `preexec_fn` that makes three syscalls and nothing
else (the agent has threads: Python code in its forked child must take no lock). All else a child
needs it inherits from the agent: the empty bounding, ambient and inheritable sets
(`capabilities.confine`), so once it is another uid it has no capability and no execve gives it one.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Sequence, Set, Tuple

from ..layout import COMMAND_HOME, COMMAND_UID, COMMAND_USER, WORKSPACE
from .procfs import kill_processes

#: How long to wait for output pipes to close once every process of the uid was killed (s).
DRAIN_TIMEOUT = 5.0

#: PATH of every program started here: fixed, so nothing the command user puts first on its PATH is run.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Passed from the agent's environment to commands when set: the egress proxy of an allowlist session.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

#: Where the container's cgroup counts memory-killer kills: (file, key), cgroup v1 then v2.
OOM_COUNTERS = (
    ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ("/sys/fs/cgroup/memory.events", "oom_kill"),
)

#: Sourced by bash before every command (BASH_ENV): raises the command's oom_score_adj, then unsets itself.
OOM_FIRST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oom_first.sh")


@dataclass
class CommandLimits:
    """Limits the agent applies to every command; the session's policy sets them (`--limits`)."""

    uid: int = COMMAND_UID
    gid: int = COMMAND_UID
    default_timeout: float = 120.0  # seconds
    max_timeout: float = 600.0  # seconds
    output_cap: int = 256 * 1024  # bytes of combined stdout+stderr returned per call
    home: str = COMMAND_HOME  # the command user's HOME


@dataclass
class CommandResult:
    output: str
    exit_code: Optional[int]  # negative: killed by that signal
    timed_out: bool
    truncated: bool
    duration: float  # seconds
    oom_killed: Optional[bool] = None  # None: the cgroup's kill counter could not be read
    shell_restarted: bool = False  # a persistent shell had died (timeout, exit) and this call got a new one

    def metadata(self) -> Dict[str, object]:
        """What the caller sees; `oom_killed` and `shell_restarted` only when they happened."""
        meta: Dict[str, object] = {"exit_code": self.exit_code, "timed_out": self.timed_out,
                                   "truncated": self.truncated}
        if self.oom_killed:
            meta["oom_killed"] = True
        if self.shell_restarted:
            meta["shell_restarted"] = True
        return meta


@dataclass
class ProgramResult:
    """What a program did: its output (capped), how it ended, and how long it took."""

    stdout: bytes
    stderr: bytes
    exit_code: Optional[int]  # negative: killed by that signal; None: never ended
    timed_out: bool
    truncated: bool  # stdout or stderr went past the cap; the rest was dropped
    duration: float  # seconds


# ---------------------------------------------------------------- output


class Sink(Protocol):
    """Where a pipe's data goes as it is read."""

    def feed(self, data: bytes) -> None: ...


class OutputCapture:
    """Keeps the first and last `cap // 2` bytes of a stream, and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap // 2 - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            keep = self.cap - self.cap // 2
            if len(self.tail) > 2 * keep:
                del self.tail[: len(self.tail) - keep]

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def text(self) -> str:
        if not self.truncated:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")
        keep = self.cap - self.cap // 2
        tail = bytes(self.tail[-keep:]) if keep else b""
        while tail and tail[0] & 0xC0 == 0x80:  # do not start inside a UTF-8 sequence
            tail = tail[1:]
        head = codecs.getincrementaldecoder("utf-8")("replace").decode(bytes(self.head), final=False)
        omitted = self.total - len(self.head) - len(tail)
        return "%s\n[... %d bytes of output truncated ...]\n%s" % (head, omitted, tail.decode("utf-8", "replace"))


class HeadCapture:
    """Keeps the first `cap` bytes of a stream, and whether more came."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.over = False

    def feed(self, data: bytes) -> None:
        room = self.cap - len(self.data)
        self.data += data[:max(room, 0)]
        self.over = self.over or len(data) > room


# ---------------------------------------------------------------- the runner


def program_env(home: str = "/nonexistent") -> Dict[str, str]:
    """A clean environment for programs: fixed PATH, UTF-8 characters, nothing inherited."""
    return {"PATH": SAFE_PATH, "LC_CTYPE": "C.UTF-8", "HOME": home}


class Runner:
    """Starts the agent's processes as unprivileged uids, within the session's limits."""

    def __init__(self, limits: Optional[CommandLimits] = None) -> None:
        self.limits = limits or CommandLimits()
        #: Process groups of live persistent shells: the clean-up after commands and programs spares them.
        self.shell_groups: Set[int] = set()
        self._locks: Dict[int, asyncio.Lock] = {}
        #: The first persistent shell, started ahead (`prestart_shell`): (its cwd, its start).
        self._prestarted: Optional[Tuple[str, "asyncio.Future[asyncio.subprocess.Process]"]] = None

    def configure(self, limits: CommandLimits) -> None:
        """Take the session's limits: the agent does so once, at start, before any environment code runs."""
        self.limits = limits

    def time_limit(self, requested: Optional[float]) -> float:
        """A command's time limit (s): the default, or `requested` kept within 0 and the maximum."""
        if requested is None:
            return self.limits.default_timeout
        return max(0.0, min(float(requested), self.limits.max_timeout))

    # -- commands as the command user ------------------------------------------

    async def run_command(self, command: str, *, timeout: Optional[float] = None,
                          cwd: str = WORKSPACE) -> CommandResult:
        """Run `command` with bash as the command user; never raises for what the command does."""
        limit = self.time_limit(timeout)
        limits = self.limits
        async with self.user_lock(limits.uid):
            started = time.monotonic()
            kills_before = oom_kills()
            capture = OutputCapture(limits.output_cap)
            exit_code, timed_out, _ = await self._run(
                ["/bin/bash", "-c", command], uid=limits.uid, gid=limits.gid, cwd=cwd, env=self.command_env(cwd),
                stdin=None, outputs=[capture], timeout=limit)
            return CommandResult(capture.text(), exit_code, timed_out, capture.truncated, time.monotonic() - started,
                                 oom_killed_since(kills_before))

    def prestart_shell(self, cwd: str) -> None:
        """Start the session's first persistent shell now (bash costs ~25 ms to start on fuse-overlayfs), for
        an environment with a shell tool: its first call takes it. Later shells start when asked for."""
        self._prestarted = (cwd, asyncio.ensure_future(self._spawn_shell(cwd)))

    async def start_shell(self, cwd: str) -> asyncio.subprocess.Process:
        """A persistent bash as the command user: stdin and stdout piped, stderr into stdout; the one
        started ahead if it is for `cwd` and still runs.

        Its process group is spared by the clean-up after commands and programs until `stop_shell`.
        """
        prestarted, self._prestarted = self._prestarted, None
        if prestarted is not None and prestarted[0] == cwd:
            try:
                proc = await prestarted[1]
            except OSError:
                proc = None
            if proc is not None and proc.returncode is None:
                return proc
        elif prestarted is not None:
            prestarted[1].add_done_callback(self._stop_unused)
        return await self._spawn_shell(cwd)

    def _stop_unused(self, started: "asyncio.Future[asyncio.subprocess.Process]") -> None:
        if not started.cancelled() and started.exception() is None:
            proc = started.result()
            self.shell_groups.discard(proc.pid)
            _kill_group(proc.pid)

    async def _spawn_shell(self, cwd: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            "/bin/bash", "--noprofile", "--norc",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=self.command_env(cwd),
            start_new_session=True,
            **self.drop_privileges(),
        )
        self.shell_groups.add(proc.pid)
        return proc

    async def stop_shell(self, proc: asyncio.subprocess.Process) -> None:
        """Kill a shell, its jobs and whatever the command user detached from it (setsid, nohup)."""
        self.shell_groups.discard(proc.pid)
        _kill_group(proc.pid)
        self.kill_leftovers(self.limits.uid)
        await proc.wait()

    async def run_helper(self, argv: Sequence[str], *, stdin: bytes, cwd: str,
                         timeout: float) -> Optional[Tuple[bytes, bytes]]:
        """Run a short helper program as the command user, beside whatever else runs (the file tools' operations).

        No lock and no clean-up after it: it starts nothing. Its stdout and stderr, or None if it
        outlived `timeout` (s) and was killed.
        """
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=cwd, env=self.command_env(cwd), start_new_session=True,
            **self.drop_privileges(),
        )
        try:
            return await asyncio.wait_for(proc.communicate(stdin), timeout)
        except asyncio.TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return None

    def command_env(self, cwd: str) -> Dict[str, str]:
        """The command user's environment: a fixed PATH, its HOME and name, UTF-8, and the egress proxy if any."""
        env = {name: os.environ[name] for name in PROXY_VARIABLES if name in os.environ}
        env.update({
            "PATH": SAFE_PATH,
            "HOME": self.limits.home,
            "USER": COMMAND_USER,
            "LOGNAME": COMMAND_USER,
            # UTF-8 characters without loading every locale category (LANG costs 1.5 ms per bash start
            # on fuse-overlayfs); the other categories of C.UTF-8 are those of C anyway.
            "LC_CTYPE": "C.UTF-8",
            "TERM": "dumb",
            "PWD": cwd,
            # bash sources this first: it raises its own oom_score_adj (allowed unprivileged), then unsets itself.
            "BASH_ENV": OOM_FIRST,
        })
        return env

    # -- programs as any uid ---------------------------------------------------

    async def run_program(self, argv: Sequence[str], *, uid: int, gid: int, stdin: bytes = b"",
                          timeout: float = 60.0, cwd: str = "/", env: Optional[Dict[str, str]] = None,
                          output_cap: int = 4 * 1024 * 1024) -> ProgramResult:
        """Run `argv` (no shell) as `uid`/`gid` (not root), with no supplementary groups, in its own session.

        `stdin` is written to it and closed. Past `timeout` (s) it is killed with its group. Once it
        ends, every process of `uid` is killed (for the command user: except its persistent shells),
        so nothing it started outlives it, and programs of one uid run one at a time (with
        `run_command` for the command user). Never raises for what the program does.
        """
        if uid == 0:
            raise ValueError("programs never run as root: the clean-up after them would kill every root process, "
                             "the agent's included")
        async with self.user_lock(uid):
            if uid != self.limits.uid:
                kill_processes(uid)  # a grader uid starts from nothing: no process left to wait for it
            started = time.monotonic()
            out, err = HeadCapture(output_cap), HeadCapture(output_cap)
            exit_code, timed_out, ended = await self._run(
                list(argv), uid=uid, gid=gid, cwd=cwd, env=env or program_env(), stdin=stdin, outputs=[out, err],
                timeout=timeout)
            stdout, out_over = (bytes(out.data), out.over) if ended[0] else (b"", False)
            stderr, err_over = (bytes(err.data), err.over) if ended[1] else (b"", False)
            return ProgramResult(stdout, stderr, exit_code, timed_out, out_over or err_over,
                                 time.monotonic() - started)

    # -- the common part -------------------------------------------------------

    async def _run(self, argv: Sequence[str], *, uid: int, gid: int, cwd: str, env: Dict[str, str],
                   stdin: Optional[bytes], outputs: Sequence[Sink],
                   timeout: float) -> Tuple[Optional[int], bool, List[bool]]:
        """Run `argv` as `uid`/`gid` until it exits or `timeout` (s) passes; then kill what is left of `uid`.

        `stdin` is written to it and closed (None: /dev/null). With one output, stdout and stderr both
        go to it; with two, one each. Returns the exit code, whether it timed out, and for each output
        whether its pipe was read to the end.
        """
        # Our own pipes, not asyncio's: Process.wait() must mean "the program exited" even while
        # something it started still holds them (Python 3.12+ waits for asyncio's pipes).
        pipes = [os.pipe() for _ in outputs]
        stdin_read, stdin_write = (-1, -1) if stdin is None else os.pipe()
        ours = [read for read, _ in pipes] + ([stdin_write] if stdin is not None else [])
        theirs = [write for _, write in pipes] + ([stdin_read] if stdin is not None else [])
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin_read,
                stdout=pipes[0][1],
                stderr=pipes[-1][1],
                cwd=cwd,
                env=env,
                start_new_session=True,
                **self.drop_privileges(uid, gid),
            )
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        pumps = [asyncio.ensure_future(_pump(pipes[i][0], outputs[i])) for i in range(len(outputs))]
        feeders = [] if stdin is None else [asyncio.ensure_future(_feed(stdin_write, stdin))]
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            timed_out = True
        finally:
            _kill_group(proc.pid)
            self.kill_leftovers(uid)
            await proc.wait()
        _, pending = await asyncio.wait(pumps + feeders, timeout=DRAIN_TIMEOUT)
        for task in pending:
            task.cancel()
        ended = [pump.done() and not pump.cancelled() for pump in pumps]
        for pump in pumps:
            if pump.done() and not pump.cancelled():
                pump.result()  # a pump that failed fails the call
        return proc.returncode, timed_out, ended

    def user_lock(self, uid: int) -> asyncio.Lock:
        """The lock commands and programs of `uid` hold: the clean-up after each kills every process of its uid.

        Created on first use, inside the running loop (Python 3.8/3.9 locks bind to a loop when made).
        """
        if uid not in self._locks:
            self._locks[uid] = asyncio.Lock()
        return self._locks[uid]

    def kill_leftovers(self, uid: int) -> bool:
        """SIGKILL every process of `uid`, the command user's live persistent shells spared."""
        return kill_processes(uid, spare_groups=self.shell_groups if uid == self.limits.uid else ())

    def drop_privileges(self, uid: Optional[int] = None, gid: Optional[int] = None) -> Dict[str, Any]:
        """Popen arguments that make the child the command user (or `uid`/`gid`) with no extra groups.

        Its real, effective and saved ids all change (setreuid(u, u) sets the saved uid too), so it keeps
        no way back to root; the capabilities it inherited go with the change of uid.
        """
        to_uid = self.limits.uid if uid is None else uid
        to_gid = self.limits.gid if gid is None else gid
        if sys.version_info >= (3, 9):
            return {"user": to_uid, "group": to_gid, "extra_groups": []}

        def demote() -> None:  # Python 3.8: no user= in Popen
            os.setgroups([])
            os.setresgid(to_gid, to_gid, to_gid)
            os.setresuid(to_uid, to_uid, to_uid)

        return {"preexec_fn": demote}


#: The agent's runner. `__main__` gives it the session's limits before anything runs; it is never
#: replaced, so every module that imported it holds the configured one.
RUNNER = Runner()


# ---------------------------------------------------------------- helpers


def oom_kills() -> Optional[int]:
    """How many processes the memory killer has killed in this container so far, or None if unreadable."""
    for path, key in OOM_COUNTERS:
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def oom_killed_since(kills_before: Optional[int]) -> Optional[bool]:
    """Whether the memory killer killed anything since it had killed `kills_before`; None if either is unknown."""
    kills_after = oom_kills()
    return None if kills_before is None or kills_after is None else kills_after > kills_before


async def _pump(read_fd: int, sink: Sink) -> None:
    """Feed everything read from the pipe `read_fd` to `sink`, until EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            sink.feed(data)
    finally:
        transport.close()


async def _feed(fd: int, data: bytes) -> None:
    """Write `data` to the pipe `fd` without blocking the loop, then close it; a reader that left is fine."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await _writable(fd)
    except OSError:  # EPIPE: the program stopped reading (or was killed)
        pass
    finally:
        os.close(fd)


async def _writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
