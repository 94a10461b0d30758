"""Running untrusted commands as the unprivileged user, bounded in time and output.

Runs inside the container as part of the agent (root with only SETUID, SETGID
and KILL). Every command:

- runs as the command user (uid 1000 by default) with no supplementary groups,
  a clean environment, in its own session and process group, and with
  `oom_score_adj` 1000 (set by `oom_first.sh`) so the memory killer takes it before the agent;
- is killed with its whole process group when it outlives its timeout, its
  partial output kept and `timed_out` set;
- has its output capped: the head and the tail are kept, `truncated` set, and the
  agent never holds more than the cap in memory;
- leaves nothing behind: once it ends, every process of the command user is
  killed (background jobs, daemons that called setsid), so commands of one
  session run one at a time;
- is reported as `oom_killed` when the memory killer killed any of its processes,
  read from the container's own cgroup counter before and after it (Docker's
  OOMKilled flag only covers the container's main process). Where the counter
  cannot be read, nothing is reported rather than guessed.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Set

#: How long to wait for the output pipe to close after every writer was killed (s).
_DRAIN_TIMEOUT = 5.0

#: Where the container's cgroup counts memory-killer kills: (file, key), cgroup v1 then v2.
OOM_COUNTERS = (
    ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ("/sys/fs/cgroup/memory.events", "oom_kill"),
)


@dataclass
class CommandLimits:
    """Limits the agent applies to every command; set from the session's policy."""

    uid: int = 1000
    gid: int = 1000
    default_timeout: float = 120.0  # seconds
    max_timeout: float = 600.0  # seconds
    output_cap: int = 256 * 1024  # bytes of combined stdout+stderr returned per call
    home: str = "/home/user"


LIMITS = CommandLimits()


def configure(limits: CommandLimits) -> None:
    """Replace the limits (the agent calls this once at start)."""
    global LIMITS
    LIMITS = limits


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


#: Passed from the agent's environment to commands when set: the egress proxy of an allowlist session.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def command_env(cwd: str) -> Dict[str, str]:
    env = {name: os.environ[name] for name in PROXY_VARIABLES if name in os.environ}
    env.update({
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": LIMITS.home,
        "USER": "user",
        "LOGNAME": "user",
        # UTF-8 characters without loading every locale category (LANG costs 1.5 ms per bash start
        # on fuse-overlayfs); the other categories of C.UTF-8 are those of C anyway.
        "LC_CTYPE": "C.UTF-8",
        "TERM": "dumb",
        "PWD": cwd,
        # bash sources this first: it raises its own oom_score_adj (allowed unprivileged), then unsets itself.
        "BASH_ENV": _OOM_FIRST,
    })
    return env


_OOM_FIRST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oom_first.sh")

_user_locks: Dict[int, asyncio.Lock] = {}


def user_lock(uid: int) -> asyncio.Lock:
    """The lock one-shot programs of `uid` hold: the clean-up after each kills every process of its uid.

    Created on first use, inside the running loop (Python 3.8/3.9 locks bind to a loop when made).
    """
    if uid not in _user_locks:
        _user_locks[uid] = asyncio.Lock()
    return _user_locks[uid]


async def run_command(command: str, *, timeout: Optional[float] = None, cwd: str = "/workspace") -> CommandResult:
    """Run `command` with bash as the command user; never raises for what the command does."""
    limit = LIMITS.default_timeout if timeout is None else max(0.0, min(float(timeout), LIMITS.max_timeout))
    async with user_lock(LIMITS.uid):
        return await _run(command, limit, cwd)


async def _run(command: str, limit: float, cwd: str) -> CommandResult:
    started = time.monotonic()
    kills_before = oom_kills()
    # Our own pipe, not asyncio's: Process.wait() must mean "bash exited", even
    # while a background job still holds the output open (Python 3.12+ waits for pipes).
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/bash", "-c", command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            cwd=cwd,
            env=command_env(cwd),
            start_new_session=True,
            **drop_privileges(),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    capture = OutputCapture(LIMITS.output_cap)
    pump = asyncio.ensure_future(_pump(read_fd, capture))
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout=limit)
    except asyncio.TimeoutError:
        timed_out = True
    finally:
        _kill_group(proc.pid)
        kill_user_processes(LIMITS.uid, spare_groups=LIVE_SHELL_GROUPS)
        await proc.wait()
    try:
        await asyncio.wait_for(pump, timeout=_DRAIN_TIMEOUT)
    except asyncio.TimeoutError:
        pass
    kills_after = oom_kills()
    oom_killed = None if kills_before is None or kills_after is None else kills_after > kills_before
    return CommandResult(capture.text(), proc.returncode, timed_out, capture.truncated, time.monotonic() - started,
                         oom_killed)


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


async def _pump(read_fd: int, capture: OutputCapture) -> None:
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
            capture.feed(data)
    finally:
        transport.close()


def drop_privileges(uid: Optional[int] = None, gid: Optional[int] = None) -> Dict[str, Any]:
    """Popen arguments that make the child the command user (or `uid`/`gid`) with no extra groups."""
    to_uid = LIMITS.uid if uid is None else uid
    to_gid = LIMITS.gid if gid is None else gid
    if sys.version_info >= (3, 9):
        return {"user": to_uid, "group": to_gid, "extra_groups": []}

    def demote() -> None:  # Python 3.8: no user= in Popen
        os.setgroups([])
        os.setresgid(to_gid, to_gid, to_gid)
        os.setresuid(to_uid, to_uid, to_uid)

    return {"preexec_fn": demote}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def user_pids(uid: int) -> List[int]:
    """Live (non-zombie) processes with `uid` as any of their uids."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/status" % entry) as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if str(uid) in fields.get("Uid", "").split():
            pids.append(int(entry))
    return pids


#: Process groups of live persistent shells (see shell.py): the clean-up after one-shot commands spares them.
LIVE_SHELL_GROUPS: Set[int] = set()


def kill_user_processes(uid: int, rounds: int = 200, spare_groups: Iterable[int] = ()) -> bool:
    """SIGKILL every process of `uid` outside `spare_groups`, repeating until none is left (fork bombs included)."""
    spare = set(spare_groups)
    for _ in range(rounds):
        pids = [pid for pid in user_pids(uid) if not spare or _group_of(pid) not in spare]
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.002)
    return not [pid for pid in user_pids(uid) if not spare or _group_of(pid) not in spare]


def _group_of(pid: int) -> Optional[int]:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
