"""One `orsbox serve` per state dir, and per node id on this host: two `flock` locks held for the process's life.

Labels are the state: at start-up a server serves again, or removes, every container labelled with its node
id, so a second server with the same node id (or state dir) would sweep the first one's sessions. `orsbox
serve` therefore takes, before it connects to the engine,

    <state dir>/orsbox.lock                    one server per state dir
    /run/lock/orsbox/node-<node id>.lock       one server per node id on this host (folder 0755)

both exclusive and non-blocking, and refuses to start if either is held, naming the holder's pid (written
into the file once the lock is taken). The kernel drops a `flock` when its holder dies, `kill -9` included,
so no lock goes stale; a lock file left behind is reused, never an error. Where /run/lock is not writable,
only the state dir lock is taken, and the log says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
import time
from pathlib import Path
from types import TracebackType

import structlog

from .errors import ConfigError, InstanceLocked

log = structlog.get_logger()

RUN_LOCK_DIR = Path("/run/lock/orsbox")  # host-wide: one lock file per node id
STATE_LOCK_NAME = "orsbox.lock"
SAFE_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used as is in the file name; others are hashed
PID_WAIT = 0.5  # s to wait for a holder that has just taken its lock to write its pid


class InstanceLock:
    """The locks one server holds: released by `release()`, by leaving its `with` block, or by exiting."""

    def __init__(self, held: dict[Path, int]) -> None:
        self._held = held  # lock file -> open descriptor holding its flock

    @property
    def paths(self) -> list[Path]:
        return list(self._held)

    @classmethod
    def acquire(cls, state_dir: Path, node_id: str, *, run_dir: Path = RUN_LOCK_DIR) -> InstanceLock:
        """Take the state dir lock, then the node id lock; raise `InstanceLocked` if another process holds one."""
        state_lock = state_dir / STATE_LOCK_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
            held = {state_lock: _take(state_lock, f"the state dir {state_dir}",
                                      "stop it, or give this server another --state-dir (ORSBOX_STATE_DIR)")}
        except OSError as exc:
            raise ConfigError(f"cannot lock the state dir {state_dir}: {exc}") from exc
        lock = cls(held)
        try:
            node_lock = run_dir / node_lock_name(node_id)
            try:
                _prepare_run_dir(run_dir)
                held[node_lock] = _take(node_lock, f"the node id {node_id!r} on this host",
                                        "stop it, or give this server another ORSBOX_NODE_ID")
            except OSError as exc:
                log.warning("node_lock_unavailable", path=str(node_lock), error=str(exc),
                            hint="only the state dir is locked: a second server with this node id and another "
                                 "state dir would not be refused")
        except BaseException:
            lock.release()
            raise
        return lock

    def release(self) -> None:
        """Let every lock go (idempotent); the files stay, for the next server to reuse."""
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def node_lock_name(node_id: str) -> str:
    """`node-<id>.lock` for a plain id; any other id as its hash (`=` is never in a plain id, so none collide)."""
    if SAFE_NODE_ID.fullmatch(node_id):
        return f"node-{node_id}.lock"
    return f"node-sha256={hashlib.sha256(node_id.encode()).hexdigest()[:32]}.lock"


def _prepare_run_dir(run_dir: Path) -> None:
    """Make the host-wide folder 0755, and use it only if no one but us or root can change what is in it."""
    try:
        run_dir.mkdir(mode=0o755)
        os.chmod(run_dir, 0o755)  # whatever the umask
    except FileExistsError:
        pass
    info = os.lstat(run_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{run_dir} is not a directory")
    if info.st_uid not in (0, os.geteuid()) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"{run_dir} is writable by others than root and this user")


def _take(path: Path, what: str, remedy: str) -> int:
    """An open descriptor holding an exclusive flock on `path`, with our pid written in it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder_pid(fd)
        os.close(fd)
        holder = f"pid {pid}" if pid else "pid unknown"
        raise InstanceLocked(f"{what} is in use by another orsbox serve ({holder}, lock file {path}): {remedy}",
                             pid=pid, path=path) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder_pid(fd: int) -> int | None:
    """The pid the holder wrote; it may have taken the lock a moment ago, so wait for it briefly."""
    deadline = time.monotonic() + PID_WAIT
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
