"""The sandbox's host folder (`orsbox/backends/session_folder.py`): the server listens there for one
dial-in, never follows what it finds there, and removes it without recursion; and the agent dials
again after a restart, so a new server adopts its session. Fast tier: no Docker."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from orsbox.backends.channel import open_channel
from orsbox.backends.session_folder import AgentListener, make_folder, remove_folder
from orsbox.errors import SandboxError, SetupFailed

from ..support.fake_backend import FakeBackend
from ..support.ors import Ors
from .conftest import Server

NOBODY = 65534


@pytest.fixture
def sessions() -> Iterator[Path]:
    """A short parent folder (socket paths are capped at 108 bytes), like `<state dir>/sessions`."""
    folder = Path(tempfile.mkdtemp(prefix="obs-", dir="/tmp"))
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=True)


async def running() -> bool:
    return True


async def exited() -> bool:
    return False


def dial(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    return client


async def test_one_dial_in_is_taken_then_the_socket_is_gone(sessions: Path) -> None:
    folder = make_folder(sessions, "s1")
    with AgentListener.open(folder) as listener:
        socket_path = folder / "agent.sock"
        assert socket_path.is_socket() and oct(socket_path.lstat().st_mode & 0o777) == "0o600"
        agent = dial(socket_path)
        connection = await listener.accept(timeout=5, is_alive=running)
    with agent, connection:
        agent.sendall(b"ping")
        assert connection.recv(4) == b"ping"
        assert list(folder.iterdir()) == []  # no second dial-in: nothing to connect to
        with pytest.raises(FileNotFoundError):
            dial(socket_path)
    remove_folder(sessions, "s1")
    assert not folder.exists()


async def test_a_stale_socket_is_replaced(sessions: Path) -> None:
    folder = make_folder(sessions, "s1")
    with socket.socket(socket.AF_UNIX) as stale:  # a server that crashed while listening
        stale.bind(str(folder / "agent.sock"))
    with AgentListener.open(folder) as listener:
        agent = dial(folder / "agent.sock")
        (await listener.accept(timeout=5, is_alive=running)).close()
        agent.close()


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
async def test_anything_but_a_socket_at_the_sockets_name_is_refused_and_kept(sessions: Path, kind: str) -> None:
    folder = make_folder(sessions, "s1")
    bait = socket.socket(socket.AF_UNIX)  # a host socket that a symlink would lead to
    bait.bind(str(sessions / "bait.sock"))
    bait.listen(1)
    entry = folder / "agent.sock"
    if kind == "file":
        entry.write_text("x")
    elif kind == "symlink":
        entry.symlink_to(sessions / "bait.sock")
    else:
        entry.mkdir()
    with pytest.raises(SandboxError, match=r"holds agent\.sock, which is not a socket"):
        AgentListener.open(folder)
    assert os.path.lexists(entry) and (sessions / "bait.sock").is_socket()
    bait.setblocking(False)
    with pytest.raises(BlockingIOError):
        bait.accept()  # nothing dialed the bait
    bait.close()


async def test_a_folder_that_is_a_symlink_or_open_to_others_is_refused(sessions: Path) -> None:
    real = make_folder(sessions, "real")
    (sessions / "link").symlink_to(real)
    with pytest.raises(SandboxError, match="is not a directory"):
        AgentListener.open(sessions / "link")
    real.chmod(0o733)
    with pytest.raises(SandboxError, match="is not the server's own"):
        AgentListener.open(real)
    assert list(real.iterdir()) == []


async def test_the_wait_ends_at_its_timeout_and_soon_after_the_sandbox_exits(sessions: Path) -> None:
    with AgentListener.open(make_folder(sessions, "s1")) as listener:
        started = time.monotonic()
        with pytest.raises(SetupFailed, match="did not dial in within 1 s"):
            await listener.accept(timeout=1, is_alive=running)
        assert 0.9 < time.monotonic() - started < 2
        started = time.monotonic()
        with pytest.raises(SetupFailed, match="exited before its agent dialed in"):
            await listener.accept(timeout=30, is_alive=exited)
        assert time.monotonic() - started < 2


async def test_a_cancelled_wait_leaves_no_socket(sessions: Path) -> None:
    folder = make_folder(sessions, "s1")
    listener = AgentListener.open(folder)
    waiting = asyncio.ensure_future(open_channel(listener, timeout=30, is_alive=running, max_frame=2**20))
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert list(folder.iterdir()) == []
    listener.close()  # idempotent


def connect_as(uid: int, path: Path) -> tuple[int, int]:
    """A child process of uid `uid` connects to `path` and waits for the server's first byte; its pid, and a
    pipe that says "connected" and then, once the child ends, what the server did: "dropped" (EOF) or not."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: plain syscalls only, then _exit
        try:
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as intruder:
                intruder.connect(str(path))
                os.write(write_end, b"connected ")
                os.write(write_end, b"dropped" if intruder.recv(1) == b"" else b"answered")
        finally:
            os._exit(0)
    os.close(write_end)
    return pid, read_end


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another uid needs root")
async def test_a_peer_of_another_uid_is_dropped_and_the_wait_goes_on(sessions: Path) -> None:
    folder = make_folder(sessions, "s1")
    with AgentListener.open(folder) as listener:
        sessions.chmod(0o711)  # as if a mistake let others reach the socket
        folder.chmod(0o711)
        (folder / "agent.sock").chmod(0o666)
        pid, said = connect_as(NOBODY, folder / "agent.sock")
        assert os.read(said, 10) == b"connected "  # first in the queue
        agent = dial(folder / "agent.sock")
        with capture_logs() as logs:
            connection = await listener.accept(timeout=5, is_alive=running)
        with agent, connection:
            agent.sendall(b"a")
            assert connection.recv(1) == b"a"
    os.waitpid(pid, 0)
    assert os.read(said, 10) == b"dropped"
    os.close(said)
    assert [entry["peer_uid"] for entry in logs if entry["event"] == "agent_dial_in_refused"] == [NOBODY]


def test_removal_unlinks_the_socket_and_the_folder_only(sessions: Path) -> None:
    victim = sessions / "victim"
    victim.mkdir()
    (victim / "agent.sock").write_text("a host file")
    (sessions / "link").symlink_to(victim)  # a symlink where a folder should be: the link goes, not its target
    remove_folder(sessions, "link")
    assert not os.path.lexists(sessions / "link") and (victim / "agent.sock").read_text() == "a host file"

    deep = make_folder(sessions, "deep")  # what an older orsbox's containers could leave: stays, and is said
    fd = os.open(deep, os.O_PATH)
    for _ in range(3000):
        os.mkdir("d", dir_fd=fd)
        fd, parent = os.open("d", os.O_PATH, dir_fd=fd), fd
        os.close(parent)
    os.close(fd)
    with capture_logs() as logs:
        remove_folder(sessions, "deep")
        remove_folder(sessions, "gone")  # idempotent
    assert deep.is_dir()
    assert [entry["event"] for entry in logs] == ["session_folder_not_removed"]


async def test_a_restarted_server_adopts_a_session_when_its_agent_dials_again(server: Server,
                                                                             backend: FakeBackend) -> None:
    first = await server(keep_sessions=True)
    sid = await first.new_session("echo")
    assert (await first.call(sid, "echo", {"text": "before"}, env="echo")).text == "before"
    await first.http.close()  # its sessions stay for the next run
    [sandbox] = backend.sandboxes.values()
    assert sandbox.process.returncode is None and list(sandbox.folder.iterdir()) == []

    second: Ors[TestClient[Any, Any]] = await server()
    assert (await second.call(sid, "echo", {"text": "after"}, env="echo")).text == "after"
    assert list(sandbox.folder.iterdir()) == []
    await second.delete(sid)
    assert not sandbox.folder.exists()
