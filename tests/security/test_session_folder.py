"""Root in a session's container against the session's host folder, `<state dir>/sessions/<container>/`,
mounted at /run/orsbox: it gets nothing. The folder is read-only in the container, so the disk cannot
be filled, no tree can be left for the server to trip on, and `agent.sock` cannot be replaced by a
symlink to a host path; the socket the server listened on is gone once the agent dialed in, so nothing
else in the container can open a second channel. The session works throughout and survives a restart.

Each attack runs as root in the container (`docker exec -u 0`: what a command would be after an escape
to root, or the agent itself if compromised); the host folder is read before and after.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orsbox.api import create_app
from orsbox.config import Config

from ..support.managed import session_containers
from ..support.ors import Ors

pytestmark = pytest.mark.docker

#: Each line `label outcome`: "done", or the errno's name.
ATTACKS = r"""
import errno, os, socket
D = "/run/orsbox"
def attempt(label, action):
    try:
        action()
        print(label, "done")
    except OSError as exc:
        print(label, errno.errorcode.get(exc.errno, exc.errno))
def big_file():
    with open(D + "/big", "wb") as out:
        for _ in range(16):
            out.write(b"x" * 2**20)
def many_files():
    for i in range(1000):
        open(D + "/f%d" % i, "w").close()
def deep_tree():
    path = D
    for _ in range(3000):
        path += "/d"
        os.mkdir(path)
def bind_a_socket():
    socket.socket(socket.AF_UNIX).bind(D + "/other.sock")
def dial_in():
    socket.socket(socket.AF_UNIX).connect(D + "/agent.sock")
attempt("big_file", big_file)
attempt("many_files", many_files)
attempt("deep_tree", deep_tree)
attempt("remove_socket", lambda: os.unlink(D + "/agent.sock"))
attempt("symlink_socket", lambda: os.symlink(BAIT, D + "/agent.sock"))
attempt("bind_a_socket", bind_a_socket)
attempt("dial_in", dial_in)
"""

REFUSED = {"big_file": "EROFS", "many_files": "EROFS", "deep_tree": "EROFS", "remove_socket": "EROFS",
           "symlink_socket": "EROFS", "bind_a_socket": "EROFS",
           "dial_in": "ENOENT"}  # the server took its one connection and unlinked its socket


@pytest.fixture
def session_config(runtime: str, config: Config, policies: Callable[..., Config]) -> Config:
    return policies(bash='runtime = "runsc"\n') if runtime == "runsc" else config


@pytest.fixture
def bait_path() -> Iterator[Path]:
    """A short host path (socket paths are capped at 108 bytes) outside every container."""
    folder = Path(tempfile.mkdtemp(prefix="obb-", dir="/tmp"))
    yield folder / "bait.sock"
    shutil.rmtree(folder)


async def attack_as_root(container: Any, bait: Path) -> dict[str, str]:
    """Run ATTACKS as root in `container`; each attack's outcome by label."""
    script = f"BAIT = {str(bait)!r}\n{ATTACKS}"
    result = await asyncio.get_running_loop().run_in_executor(
        None, lambda: container.exec_run(["python3", "-c", script], user="0"))
    lines = result.output.decode(errors="replace").splitlines()
    assert result.exit_code == 0, lines
    return dict(line.split(" ", 1) for line in lines)


def entries(folder: Path) -> list[tuple[str, str, int]]:
    """What the host folder holds: name, kind, size (never following a symlink)."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        info = entry.stat(follow_symlinks=False)
        found.append((entry.name, stat.filemode(info.st_mode)[0], info.st_size))
    return found


def bait_listener(path: Path) -> socket.socket:
    """A host socket that no session may ever reach: where a symlinked agent.sock would point."""
    bait = socket.socket(socket.AF_UNIX)
    bait.bind(str(path))
    bait.listen(4)
    bait.setblocking(False)
    return bait


def dialed(bait: socket.socket) -> bool:
    try:
        connection, _ = bait.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


async def test_root_in_the_container_cannot_write_the_session_folder(
    session_config: Config, aiohttp_client: Any, engine: docker.DockerClient, state_dir: Path, bait_path: Path
) -> None:
    ors = Ors(await aiohttp_client(create_app(session_config)))
    sid = await ors.new_session()
    await ors.prompt(sid)
    [container] = session_containers(engine, sid)
    folder = state_dir / "sessions" / container.name
    before = entries(folder)

    outcomes = await attack_as_root(container, bait_path)

    assert outcomes == REFUSED
    assert entries(folder) == before == []  # and the server's socket went once the agent dialed in
    assert oct(folder.stat().st_mode & 0o777) == "0o700" and folder.stat().st_uid == os.geteuid()
    assert (await ors.bash(sid, "echo still served")).text == "still served\n"
    await ors.delete(sid)
    assert not folder.exists()


async def test_a_restarted_server_adopts_the_session_and_never_follows_the_container(
    session_config: Config, aiohttp_client: Any, engine: docker.DockerClient, state_dir: Path, bait_path: Path
) -> None:
    bait = bait_listener(bait_path)
    try:
        first = await aiohttp_client(create_app(session_config.model_copy(update={"keep_sessions": True})))
        ors = Ors(first)
        sid = await ors.new_session()
        assert (await ors.bash(sid, "echo before > state.txt")).output["metadata"]["exit_code"] == 0
        [container] = session_containers(engine, sid)
        folder = state_dir / "sessions" / container.name
        outcomes = await attack_as_root(container, bait_path)
        assert outcomes["remove_socket"] == outcomes["symlink_socket"] == "EROFS"
        await first.close()  # a rolling restart: the session's container stays for the next run
        assert [c.id for c in session_containers(engine, sid)] == [container.id]

        second = Ors(await aiohttp_client(create_app(session_config)))
        assert (await second.bash(sid, "cat state.txt")).text == "before\n"
        assert not dialed(bait)
        assert entries(folder) == []
        await second.delete(sid)
        assert session_containers(engine, sid) == [] and not folder.exists()
    finally:
        bait.close()
