"""A sandbox's host folder, where the server listens for its agent to dial in.

The server makes one folder per sandbox (0700, its own) and listens on `agent.sock` in it (0600, its
own). The Docker backend bind-mounts the folder **read-only** at `/run/orsbox`: the agent, root in the
container, dials in (connect() works on a read-only mount), and nothing in the container can make,
rename or remove anything there, so the container cannot write host storage at all. The listener takes
one connection, from a peer of the server's own uid (container root; the commands' uid cannot even
enter the folder), then closes and unlinks its socket: nothing else in the container can dial in later.
After a restart the next server listens again in the same folder (adoption), and the agent, which
redials whenever it has no connection, comes back.

The folder only ever holds what the server put there, and the server still checks: it opens the folder
with O_NOFOLLOW and binds through that descriptor (`/proc/self/fd/N/agent.sock`), unlinks a stale entry
at the socket's name only if it is a socket, and removes a folder by unlinking at most that socket and
then the folder itself, relative to the parent's descriptor: no path walk, no recursion, no symlink followed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import structlog

from ..agent.layout import SOCKET_NAME
from ..errors import SandboxError, SetupFailed

log = structlog.get_logger()

FOLDER_MODE = 0o700
SOCKET_MODE = 0o600
LIVENESS_POLL = 0.5  # s between "is the sandbox still running?" checks while waiting for the agent
PEER_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def make_folder(parent: Path, name: str) -> Path:
    """Create the folder `parent/name` for a new sandbox (0700, the server's own); it must not exist yet."""
    folder = parent / _component(name)
    try:
        folder.mkdir(mode=FOLDER_MODE)
    except OSError as exc:
        raise SandboxError(f"cannot make the sandbox's folder {folder}: {exc.strerror}") from exc
    return folder


def folder_names(parent: Path) -> list[str]:
    """The names in `parent` (sandbox folders, and whatever else is there; none if it is missing)."""
    try:
        with os.scandir(parent) as entries:
            return [entry.name for entry in entries]
    except FileNotFoundError:
        return []


def remove_folder(parent: Path, name: str) -> None:
    """Remove the folder `parent/name` and its socket; idempotent, never raises (what it leaves is logged).

    Only the socket and the folder are unlinked, relative to the parent's descriptor; a symlink where
    the folder was is unlinked itself, never followed. A folder holding anything else stays.
    """
    try:
        parent_fd = os.open(parent, os.O_PATH | os.O_DIRECTORY)
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("session_folder_not_removed", folder=str(parent / name), error=str(exc)[:200])
        return
    try:
        try:
            folder_fd = os.open(_component(name), os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            os.unlink(name, dir_fd=parent_fd)  # a symlink or a file where the folder should be: itself, not its target
            return
        try:
            _unlink_socket(folder_fd)
        finally:
            os.close(folder_fd)
        os.rmdir(name, dir_fd=parent_fd)
    except (OSError, ValueError) as exc:
        log.warning("session_folder_not_removed", folder=str(parent / name), error=str(exc)[:200])
    finally:
        os.close(parent_fd)


class AgentListener:
    """The server's end of one dial-in: a listening socket in a sandbox's folder, for one connection.

    `open` binds it, `accept` waits for the agent, `close` (idempotent; also on leaving a `with`) stops
    listening and unlinks the socket. Close it on every path: after `accept`, nothing else may dial in.
    """

    def __init__(self, folder: Path, folder_fd: int, sock: socket.socket, inode: int) -> None:
        self.folder = folder
        self._folder_fd = folder_fd
        self._sock: socket.socket | None = sock
        self._inode = inode  # of the socket bound here: close() unlinks that one only

    @classmethod
    def open(cls, folder: Path) -> AgentListener:
        """Listen on `folder/agent.sock`. Refuses (SandboxError) a folder that is not a directory of the
        server's own, closed to others, and a stale entry at the socket's name that is not a socket."""
        try:
            folder_fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise SandboxError(f"the sandbox's folder {folder} is not a directory: {exc.strerror}") from exc
        try:
            _check_folder(folder, os.fstat(folder_fd))
            _unlink_socket(folder_fd, refuse_other=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                os.fchmod(sock.fileno(), SOCKET_MODE)  # the socket file is born with this mode (no umask race)
                sock.bind(f"/proc/self/fd/{folder_fd}/{SOCKET_NAME}")  # in the folder opened above, whatever its path
                sock.listen(1)
                sock.setblocking(False)
                inode = os.stat(SOCKET_NAME, dir_fd=folder_fd, follow_symlinks=False).st_ino
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            os.close(folder_fd)
            raise SandboxError(f"cannot listen for the sandbox's agent in {folder}: {exc}") from exc
        except BaseException:
            os.close(folder_fd)
            raise
        return cls(folder, folder_fd, sock, inode)

    def __enter__(self) -> AgentListener:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def accept(self, *, timeout: float, is_alive: Callable[[], Awaitable[bool]]) -> socket.socket:
        """The agent's connection, within `timeout` s; SetupFailed soon after its sandbox stops running.

        A peer of another uid than the server's (not root in the container, which alone can reach the
        socket) is dropped, and the wait goes on.
        """
        assert self._sock is not None, "accept() on a closed listener"
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SetupFailed(f"the sandbox's agent did not dial in within {timeout:.0f} s")
            try:
                connection, _ = await asyncio.wait_for(loop.sock_accept(self._sock), min(remaining, LIVENESS_POLL))
            except TimeoutError:
                if not await is_alive():
                    raise SetupFailed("the sandbox's container exited before its agent dialed in") from None
                continue
            pid, uid, _gid = PEER_CREDENTIALS.unpack(
                connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEER_CREDENTIALS.size))
            if uid == os.geteuid():
                return connection
            connection.close()
            log.warning("agent_dial_in_refused", folder=str(self.folder), peer_uid=uid, peer_pid=pid)

    def close(self) -> None:
        """Stop listening and unlink the socket (if it is still the one bound here)."""
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        try:
            info = os.stat(SOCKET_NAME, dir_fd=self._folder_fd, follow_symlinks=False)
            if stat.S_ISSOCK(info.st_mode) and info.st_ino == self._inode:
                os.unlink(SOCKET_NAME, dir_fd=self._folder_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("agent_socket_not_removed", folder=str(self.folder), error=str(exc)[:200])
        finally:
            os.close(self._folder_fd)


def _check_folder(folder: Path, info: os.stat_result) -> None:
    """The server's own, and no one else may list or write it (searching it, 0711, is harmless)."""
    if info.st_uid != os.geteuid() or info.st_mode & 0o066:
        raise SandboxError(f"the sandbox's folder {folder} is not the server's own (owner uid {info.st_uid}, "
                           f"mode {oct(info.st_mode & 0o777)}; it must be uid {os.geteuid()}, mode 0700 or 0711)")


def _unlink_socket(folder_fd: int, *, refuse_other: bool = False) -> None:
    """Unlink `agent.sock` in the folder if it is a socket; anything else there stays (or, with
    `refuse_other`, is refused with SandboxError)."""
    try:
        info = os.stat(SOCKET_NAME, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(info.st_mode):
        os.unlink(SOCKET_NAME, dir_fd=folder_fd)
    elif refuse_other:
        kind = stat.filemode(info.st_mode)[0]
        raise SandboxError(f"the sandbox's folder holds {SOCKET_NAME}, which is not a socket (file type {kind!r}): "
                           "orsbox never makes one; remove it by hand")


def _component(name: str) -> str:
    """`name` as one path component, or ValueError."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a folder name")
    return name
