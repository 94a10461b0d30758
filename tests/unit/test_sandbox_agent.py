"""The agent in sandbox mode (`serve --entrypoint sandbox`), as a local process on its socket, without Docker.

Its commands and file operations really run as an unprivileged uid, one no host process uses (picked per
run: teardown kills every process of that uid), in a folder of the test's own under /tmp.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orsbox.agent import wire
from orsbox.agent.layout import SOCKET_NAME
from orsbox.agent.runtime import sandbox, service
from orsbox.agent.runtime.procfs import kill_processes, user_pids
from orsbox.agent.wire import ErrorType, Method, WireError
from orsbox.backends.session_folder import AgentListener, make_folder

from ..support.fake_backend import UNUSED_UID

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 4 * 1024 * 1024 - 64 * 1024  # openreward's FILE_CHUNK_BYTES
MiB = 1024 * 1024
#: The agent's python: images have 3.8+ (ORSBOX_TEST_AGENT_PYTHON=python3.8 checks that one).
AGENT_PYTHON = os.environ.get("ORSBOX_TEST_AGENT_PYTHON", sys.executable)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent drops to another uid: needs root")


class Agent:
    """A minimal client of one agent: `call` answers the result or raises the agent's WireError."""

    def __init__(self, process: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.process, self.reader, self.writer = process, reader, writer
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while line := await self.reader.readline():
            frame = json.loads(line)
            future = self.pending.pop(frame["id"])
            if "error" in frame:
                future.set_exception(WireError(frame["error"]["type"], frame["error"]["message"]))
            else:
                future.set_result(frame["result"])

    async def call(self, method: str, **params: Any) -> Any:
        request_id = next(self.ids)
        self.pending[request_id] = future = asyncio.get_running_loop().create_future()
        self.writer.write(wire.encode({"id": request_id, "method": method, "params": params}))
        await self.writer.drain()
        return await future

    async def run(self, cmd: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(Method.SANDBOX_RUN, cmd=cmd, shell="/bin/bash",
                                                 **{"timeout_s": 30, "max_bytes": None, **params})
        result["bytes"] = base64.b64decode(result["output"])
        return result

    async def error(self, method: str, **params: Any) -> WireError:
        with pytest.raises(WireError) as caught:
            await self.call(method, **params)
        return caught.value

    async def upload(self, path: str, data: bytes, *, mkdirs: bool = True) -> dict[str, Any]:
        """As openreward's client does: chunks end to end from offset 0, then the commit."""
        for offset in range(0, max(len(data), 1), CHUNK):
            chunk = base64.b64encode(data[offset:offset + CHUNK]).decode()
            await self.call(Method.SANDBOX_WRITE, path=path, offset=offset, data=chunk, mkdirs=mkdirs and offset == 0)
        result: dict[str, Any] = await self.call(Method.SANDBOX_COMMIT, path=path, size=len(data))
        return result

    async def download(self, path: str, piece: int = MiB) -> bytes:
        size = (await self.call(Method.SANDBOX_STAT, path=path))["size"]
        data = b""
        while len(data) < size:
            answer = await self.call(Method.SANDBOX_READ, path=path, offset=len(data), length=piece)
            assert answer["file_size"] == size
            data += base64.b64decode(answer["data"])
        return data


@dataclass
class Box:
    """A folder the command user owns (`work`), in one only root may write to (`root`)."""

    root: Path
    work: Path
    uid: int


@pytest.fixture(scope="module")
def uid() -> int:
    """A uid no process has, for this module's agents (the fake backend's: picked per test process)."""
    return UNUSED_UID


@pytest.fixture
def box(uid: int) -> Iterator[Box]:
    root = Path(tempfile.mkdtemp(prefix="obsb-", dir="/tmp"))
    root.chmod(0o755)
    work = root / "work"
    work.mkdir()
    os.chown(work, uid, uid)
    yield Box(root, work, uid)
    kill_processes(uid)
    shutil.rmtree(root, ignore_errors=True)


StartAgent = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def start_agent(box: Box) -> AsyncIterator[StartAgent]:
    """Start agents in sandbox mode in `box.work`; `setup` is sent unless `sandbox=None`."""
    agents: list[Agent] = []

    async def start(*, sandbox: dict[str, Any] | None = None, setup: bool = True, entrypoint: str = "sandbox",
                    **limits: Any) -> Agent:
        folder = make_folder(box.root, f"agent-{len(agents)}")
        with AgentListener.open(folder) as listener:  # the server listens; the agent dials in
            process = await asyncio.create_subprocess_exec(
                AGENT_PYTHON, "-B", "-m", "orsbox.agent", "serve", "--entrypoint", entrypoint,
                "--socket", str(folder / SOCKET_NAME),
                "--limits", json.dumps({"uid": box.uid, "gid": box.uid, **limits}), cwd=box.work,
                env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}, stderr=asyncio.subprocess.DEVNULL)

            async def alive() -> bool:
                return process.returncode is None

            connection = await listener.accept(timeout=30, is_alive=alive)
        reader, writer = await asyncio.open_unix_connection(sock=connection, limit=64 * MiB)
        agent = Agent(process, reader, writer)
        agents.append(agent)
        if setup:
            assert await agent.call(Method.SETUP, task={}, secrets={"api_key": "s3cret"}, sandbox=sandbox or {}) == {}
        return agent

    yield start
    for agent in agents:
        if agent.process.returncode is None:
            agent.process.terminate()
        await agent.process.wait()
        agent.writer.close()
        agent.task.cancel()


@pytest.fixture
async def agent(start_agent: StartAgent) -> Agent:
    return await start_agent()


# ---------------------------------------------------------------- mode and setup


async def test_hello_reports_the_sandbox_mode_and_its_state(start_agent: StartAgent, box: Box) -> None:
    agent = await start_agent(setup=False)
    hello = await agent.call(Method.HELLO)
    assert hello["environment"] == wire.SANDBOX_ENTRYPOINT and hello["state"] == "new"
    assert hello["sandbox"] == {"workdir": str(box.work), "output_cap": 256 * 1024, "max_read": 1536 * 1024,
                                "max_timeout": 600.0}
    assert (await agent.error(Method.SANDBOX_RUN, cmd="true")).type == ErrorType.NOT_SET_UP
    assert await agent.call(Method.SETUP, task={}, secrets={}, sandbox={"env": {"A": "1"}, "workdir": None}) == {}
    assert (await agent.call(Method.HELLO))["state"] == "ready"
    assert await agent.call(Method.SETUP, task={}, secrets={}, sandbox={}) == {}  # once ready, setup is a no-op


async def test_a_malformed_sandbox_setup_fails(start_agent: StartAgent) -> None:
    agent = await start_agent(setup=False)
    error = await agent.error(Method.SETUP, task={}, secrets={}, sandbox={"env": {"A=B": "1"}})
    assert error.type == ErrorType.SETUP_FAILED and "A=B" in error.message


async def test_an_environment_agent_refuses_the_sandbox_methods() -> None:
    agent = service.Agent("tests.support.fake_envs:EchoEnvironment")
    await agent.setup({"task": {"id": "train-0", "word": "w"}})
    for method in (Method.SANDBOX_RUN, Method.SANDBOX_STAT):
        with pytest.raises(WireError) as caught:
            await agent.dispatch({"method": method, "params": {"cmd": "id", "path": "/etc/passwd"}})
        assert caught.value.type == ErrorType.BAD_REQUEST and "not a sandbox" in caught.value.message
    assert "sandbox" not in await agent.hello({})


# ---------------------------------------------------------------- runs


async def test_a_run_merges_stdout_and_stderr_in_order_as_the_command_user(agent: Agent, box: Box) -> None:
    result = await agent.run("echo one; echo two >&2; echo three; id -u; id -G; cat; read x || echo stdin-is-empty; "
                             'echo "$0"; exit 7')
    lines = result["bytes"].decode().splitlines()
    assert lines == ["one", "two", "three", str(box.uid), str(box.uid), "stdin-is-empty", "/bin/bash"]
    assert result["return_code"] == 7 and result["timed_out"] is False and result["oom_killed"] is False
    assert result["total_bytes"] == len(result["bytes"])
    signalled = await agent.run("kill -TERM $$")
    assert signalled["return_code"] == 128 + 15 and not signalled["timed_out"]


async def test_a_run_sees_the_sandbox_env_and_runs_in_its_workdir(start_agent: StartAgent, box: Box) -> None:
    other = box.root / "elsewhere"
    other.mkdir()
    agent = await start_agent(sandbox={"env": {"GREETING": "hello world", "HOME": "/nowhere"},
                                       "workdir": str(other)})
    result = await agent.run('echo "$GREETING"; echo "$HOME"; pwd; echo "$USER"; echo "${PYTHONPATH:-unset}"')
    assert result["bytes"].decode().splitlines() == ["hello world", "/nowhere", str(other), "user", "unset"]
    default = await start_agent()  # the agent's own cwd: the image's WORKDIR
    assert (await default.run("pwd; cd /; pwd"))["bytes"] == f"{box.work}\n/\n".encode()
    assert (await default.run("pwd"))["bytes"] == f"{box.work}\n".encode()  # nothing carries over


async def test_binary_output_round_trips(agent: Agent, box: Box) -> None:
    every_byte = bytes(range(256)) * 4
    (box.root / "bytes.bin").write_bytes(every_byte)
    result = await agent.run(f"cat {box.root}/bytes.bin; printf '\\377\\000end'")
    assert result["bytes"] == every_byte + b"\xff\x00end"


async def test_a_13_mib_command_is_run(agent: Agent, box: Box) -> None:
    data = os.urandom(10 * MiB)
    encoded = base64.b64encode(data).decode()
    target = box.work / "upload.bin"
    cmd = f"set -o pipefail; echo '{encoded}' | base64 -d > '{target}' && sha256sum '{target}'"  # as upload() does
    assert len(cmd) > 13 * MiB
    result = await agent.run(cmd, timeout_s=60)
    assert result["return_code"] == 0, result["bytes"][-500:]
    assert result["bytes"].split()[0].decode() == hashlib.sha256(data).hexdigest()
    too_long = await agent.error(Method.SANDBOX_RUN, cmd="#" * (wire.MAX_SANDBOX_CMD_BYTES + 1))
    assert too_long.type == ErrorType.BAD_REQUEST


async def test_max_bytes_keeps_the_head_and_counts_the_rest(agent: Agent) -> None:
    expected = "".join(f"{n}\n" for n in range(1, 200001)).encode()
    result = await agent.run("seq 1 200000", max_bytes=1001)
    assert result["bytes"] == expected[:1001] and result["total_bytes"] == len(expected)
    assert result["max_bytes"] == 1001 and result["return_code"] == 0
    uncapped = await agent.run("seq 1 200000", max_bytes=None)  # the policy's output cap
    assert uncapped["bytes"] == expected[:256 * 1024] and uncapped["max_bytes"] == 256 * 1024
    assert (await agent.run("seq 1 10", max_bytes=0))["bytes"] == b""


async def test_the_output_cap_bounds_max_bytes(start_agent: StartAgent) -> None:
    agent = await start_agent(output_cap=4096)
    result = await agent.run("head -c 100000 /dev/zero", max_bytes=50001)
    assert len(result["bytes"]) == 4096 and result["max_bytes"] == 4096 and result["total_bytes"] == 100000


async def test_a_timeout_kills_the_process_group_and_keeps_the_output(agent: Agent, box: Box) -> None:
    started = time.monotonic()
    result = await agent.run("echo started; sleep 300 & sleep 300; echo never", timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert result["return_code"] == 124 and result["timed_out"] is True
    assert result["bytes"] == b"started\n"
    def sleeping() -> list[int]:  # the run's processes (the spare shell kept for the next run is not one)
        return [pid for pid in user_pids(box.uid) if b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    for _ in range(100):  # the background sleep was in the group: it is dead, or dying
        if not sleeping():
            break
        await asyncio.sleep(0.02)
    assert not sleeping()


async def test_no_timeout_is_still_bounded_by_the_policy(start_agent: StartAgent) -> None:
    agent = await start_agent(max_timeout=0.5)
    started = time.monotonic()
    result = await agent.run("echo a; sleep 30", timeout_s=None)
    assert result["timed_out"] and result["bytes"] == b"a\n" and time.monotonic() - started < 5
    assert (await agent.run("echo b", timeout_s=None))["return_code"] == 0


async def test_runs_go_on_at_once(agent: Agent) -> None:
    started = time.monotonic()
    results = await asyncio.gather(*(agent.run(f"sleep 1; echo {n}") for n in range(6)))
    assert time.monotonic() - started < 4
    assert [r["bytes"] for r in results] == [f"{n}\n".encode() for n in range(6)]


async def test_a_detached_process_outlives_its_run_until_teardown(agent: Agent, box: Box) -> None:
    result = await agent.run("nohup sleep 300 > /dev/null 2>&1 & echo $!")
    pid = int(result["bytes"])
    assert result["return_code"] == 0 and pid in user_pids(box.uid)
    held = await agent.run("sleep 300 & echo quick")  # holds the output pipe: read for DRAIN s only
    assert held["bytes"] == b"quick\n"
    assert await agent.call(Method.TEARDOWN) == {}
    assert not user_pids(box.uid)


async def test_a_missing_shell_or_workdir_is_a_bad_request(start_agent: StartAgent, box: Box) -> None:
    agent = await start_agent(sandbox={"workdir": str(box.root / "missing")})
    assert (await agent.error(Method.SANDBOX_RUN, cmd="true")).type == ErrorType.BAD_REQUEST
    other = await start_agent()
    error = await other.error(Method.SANDBOX_RUN, cmd="true", shell="/no/such/shell")
    assert error.type == ErrorType.BAD_REQUEST and "/no/such/shell" in error.message


# ---------------------------------------------------------------- files


async def test_a_12_mib_file_goes_up_in_chunks_and_comes_back(agent: Agent, box: Box) -> None:
    data = os.urandom(12 * MiB + 123)
    path = f"{box.work}/deep/er/file.bin"
    digest = hashlib.sha256(data).hexdigest()
    for offset in range(0, len(data), CHUNK):
        chunk = base64.b64encode(data[offset:offset + CHUNK]).decode()
        for _ in range(2 if offset == CHUNK else 1):  # a retried chunk lands where it did
            await agent.call(Method.SANDBOX_WRITE, path=path, offset=offset, data=chunk, mkdirs=offset == 0)
    assert not Path(path).exists()  # nothing there before the commit
    assert await agent.call(Method.SANDBOX_COMMIT, path=path, size=len(data)) == {"sha256": digest, "size": len(data)}
    assert Path(path).read_bytes() == data
    assert await agent.call(Method.SANDBOX_STAT, path=path, sha256=True) == {"size": len(data), "sha256": digest}
    assert await agent.call(Method.SANDBOX_STAT, path=path) == {"size": len(data)}
    assert await agent.download(path) == data
    for made in (Path(path), Path(path).parent, Path(path).parent.parent):
        assert (made.stat().st_uid, made.stat().st_gid) == (box.uid, box.uid)
    assert sorted(os.listdir(Path(path).parent)) == ["file.bin"]  # the temporary file is gone
    again = await agent.call(Method.SANDBOX_COMMIT, path=path, size=len(data))  # a retried commit
    assert again["sha256"] == digest


async def test_an_upload_replaces_a_file_keeping_its_mode(agent: Agent, box: Box) -> None:
    target = box.work / "script.sh"
    assert (await agent.upload(str(target), b"old"))["size"] == 3
    target.chmod(0o750)
    assert (await agent.upload(str(target), b"#!/bin/sh\necho new\n"))["size"] == 19
    assert target.read_bytes() == b"#!/bin/sh\necho new\n" and target.stat().st_mode & 0o7777 == 0o750
    stale = box.work / ".big.orsbox-upload"  # a bigger upload that never finished: offset 0 starts afresh
    stale.write_bytes(b"x" * 1000)
    os.chown(stale, box.uid, box.uid)
    assert (await agent.upload(str(box.work / "big"), b"small"))["size"] == 5


async def test_an_empty_file(agent: Agent, box: Box) -> None:
    path = f"{box.work}/empty"
    assert (await agent.upload(path, b""))["sha256"] == hashlib.sha256(b"").hexdigest()
    assert await agent.call(Method.SANDBOX_STAT, path=path, sha256=True) == {
        "size": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    assert await agent.call(Method.SANDBOX_READ, path=path, offset=0, length=MiB) == {"data": "", "file_size": 0}


async def test_mkdirs_is_needed_for_missing_folders(agent: Agent, box: Box) -> None:
    error = await agent.error(Method.SANDBOX_WRITE, path=f"{box.work}/no/such/file", offset=0, data="", mkdirs=False)
    assert error.type == ErrorType.NOT_FOUND
    await agent.upload(f"{box.work}/no/such/file", b"x", mkdirs=True)
    assert (box.work / "no" / "such" / "file").read_bytes() == b"x"


async def test_symlinks_are_refused_never_followed(agent: Agent, box: Box) -> None:
    (box.work / "real").write_bytes(b"data")
    os.symlink(box.work / "real", box.work / "link")
    path = str(box.work / "link")
    calls: list[tuple[str, dict[str, Any]]] = [
        (Method.SANDBOX_STAT, {}), (Method.SANDBOX_STAT, {"sha256": True}),
        (Method.SANDBOX_READ, {"offset": 0, "length": 10}),
        (Method.SANDBOX_WRITE, {"offset": 0, "data": "", "mkdirs": False}), (Method.SANDBOX_COMMIT, {"size": 0})]
    for method, params in calls:
        error = await agent.error(method, path=path, **params)
        assert error.type == ErrorType.BAD_REQUEST and "symlink" in error.message, (method, error.message)
    assert os.readlink(path) == str(box.work / "real") and (box.work / "real").read_bytes() == b"data"
    os.symlink(box.work / "real", box.work / ".up.orsbox-upload")  # a symlink as the temporary file
    error = await agent.error(Method.SANDBOX_WRITE, path=str(box.work / "up"), offset=0, data="eA==")
    assert error.type == ErrorType.BAD_REQUEST and "symlink" in error.message
    assert (box.work / "real").read_bytes() == b"data"


async def test_only_regular_files(agent: Agent, box: Box) -> None:
    os.mkfifo(box.work / "fifo")
    (box.work / "folder").mkdir()
    calls: list[tuple[str, dict[str, Any]]] = [
        (Method.SANDBOX_STAT, {}), (Method.SANDBOX_READ, {"offset": 0, "length": 1}),
        (Method.SANDBOX_WRITE, {"offset": 0, "data": ""})]
    for name in ("fifo", "folder"):
        for method, params in calls:
            error = await asyncio.wait_for(agent.error(method, path=str(box.work / name), **params), 5)
            assert error.type == ErrorType.BAD_REQUEST, (name, method, error.message)
    assert (await agent.error(Method.SANDBOX_STAT, path="/dev/null")).type == ErrorType.BAD_REQUEST
    assert (await agent.error(Method.SANDBOX_STAT, path="relative/path")).type == ErrorType.BAD_REQUEST


async def test_missing_files_are_not_found(agent: Agent, box: Box) -> None:
    for path in (f"{box.work}/missing", f"{box.work}/missing/below"):
        assert (await agent.error(Method.SANDBOX_STAT, path=path)).type == ErrorType.NOT_FOUND
        assert (await agent.error(Method.SANDBOX_READ, path=path, offset=0, length=1)).type == ErrorType.NOT_FOUND
    (box.work / "file").write_bytes(b"x")
    assert (await agent.error(Method.SANDBOX_STAT, path=f"{box.work}/file/below")).type == ErrorType.NOT_FOUND


async def test_files_are_reached_with_the_command_users_permissions_only(agent: Agent, box: Box) -> None:
    secret = box.root / "secret"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)
    (box.root / "group-zero").write_bytes(b"root's group")
    (box.root / "group-zero").chmod(0o640)  # root:root: readable by root's supplementary groups, not the user's
    for path in (secret, box.root / "group-zero"):
        assert (await agent.error(Method.SANDBOX_READ, path=str(path), offset=0, length=9)).type == ErrorType.FORBIDDEN
        assert (await agent.error(Method.SANDBOX_STAT, path=str(path), sha256=True)).type == ErrorType.FORBIDDEN
    assert await agent.call(Method.SANDBOX_STAT, path=str(secret)) == {"size": 9}  # as `ls -l` would
    for path in (secret, box.root / "new"):  # a folder only root may write to
        error = await agent.error(Method.SANDBOX_WRITE, path=str(path), offset=0, data="eA==")
        assert error.type == ErrorType.FORBIDDEN, error.message
    assert secret.read_bytes() == b"root only" and not (box.root / "new").exists()
    error = await agent.error(Method.SANDBOX_WRITE, path="/proc/self/environ", offset=0, data="")
    assert error.type in (ErrorType.FORBIDDEN, ErrorType.NOT_FOUND, ErrorType.BAD_REQUEST)


async def test_only_the_file_threads_take_the_command_users_identity(agent: Agent, box: Box) -> None:
    await agent.upload(f"{box.work}/f", b"x")
    pid = agent.process.pid

    def euids() -> set[str]:
        ids = set()
        for task in os.listdir(f"/proc/{pid}/task"):
            status = Path(f"/proc/{pid}/task/{task}/status").read_text()
            ids.add(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[2])
        return ids

    assert euids() == {"0", str(box.uid)}
    assert Path(f"/proc/{pid}/status").read_text().count(f"\t{box.uid}") == 0  # the agent itself stays root
    assert (await agent.run("id -u"))["bytes"] == f"{box.uid}\n".encode()


async def test_reads_past_the_end_are_out_of_range_and_long_reads_capped(agent: Agent, box: Box) -> None:
    data = os.urandom(3 * MiB)
    (box.work / "f").write_bytes(data)
    path = str(box.work / "f")
    assert (await agent.error(Method.SANDBOX_READ, path=path, offset=len(data) + 1, length=1)).type == \
        ErrorType.OUT_OF_RANGE
    assert await agent.call(Method.SANDBOX_READ, path=path, offset=len(data), length=10) == {
        "data": "", "file_size": len(data)}
    tail = await agent.call(Method.SANDBOX_READ, path=path, offset=len(data) - 5, length=100)
    assert base64.b64decode(tail["data"]) == data[-5:]
    long = await agent.call(Method.SANDBOX_READ, path=path, offset=0, length=len(data))
    assert base64.b64decode(long["data"]) == data[:1536 * 1024]  # what the frame limit allows


async def test_a_commit_checks_the_size_and_writes_leave_no_gap(agent: Agent, box: Box) -> None:
    path = str(box.work / "f")
    await agent.call(Method.SANDBOX_WRITE, path=path, offset=0, data=base64.b64encode(b"abc").decode())
    gap = await agent.error(Method.SANDBOX_WRITE, path=path, offset=10, data=base64.b64encode(b"x").decode())
    assert gap.type == ErrorType.BAD_REQUEST and "gap" in gap.message
    wrong = await agent.error(Method.SANDBOX_COMMIT, path=path, size=4)
    assert wrong.type == ErrorType.BAD_REQUEST and "3 bytes" in wrong.message
    assert (await agent.error(Method.SANDBOX_WRITE, path=path, offset=0, data="not base64!")).type == \
        ErrorType.BAD_REQUEST
    never = await agent.error(Method.SANDBOX_COMMIT, path=str(box.work / "never-written"), size=0)
    assert never.type == ErrorType.BAD_REQUEST
    late = await agent.error(Method.SANDBOX_WRITE, path=str(box.work / "never-written"), offset=5, data="")
    assert late.type == ErrorType.BAD_REQUEST


async def test_a_long_name_gets_a_temporary_file_named_by_its_digest(agent: Agent, box: Box) -> None:
    name = "n" * 250
    temp = sandbox.upload_path(f"{box.work}/{name}")
    assert Path(temp).parent == box.work and temp.endswith(sandbox.UPLOAD_SUFFIX) and len(Path(temp).name) <= 255
    await agent.upload(f"{box.work}/{name}", b"long")
    assert (box.work / name).read_bytes() == b"long"


async def test_file_operations_refuse_to_run_without_the_command_users_identity(
        monkeypatch: pytest.MonkeyPatch, uid: int) -> None:
    monkeypatch.setattr(sandbox, "SETID_SYSCALLS", {})  # a machine whose syscall numbers are unknown
    files = sandbox.FileUser(uid, uid, threads=1)
    try:
        with pytest.raises(WireError) as caught:
            await files.call(sandbox.stat_file, "/etc/passwd", False)
        assert caught.value.type == ErrorType.INTERNAL and "as the command user" in caught.value.message
    finally:
        files.close()


async def test_a_spare_shell_is_kept_for_the_next_run_and_is_a_fresh_one(agent: Agent, box: Box) -> None:
    """Exec is slow on some container filesystems: the next run's shell is started ahead, yet each run
    still gets a shell of its own (nothing carries over)."""
    first = await agent.run("echo $$; cd /; export CARRIED=1")
    second = await agent.run("echo $$; pwd; echo ${CARRIED:-none}")
    pid_one, (pid_two, cwd, carried) = first["bytes"].split()[0], second["bytes"].split()
    assert pid_one != pid_two and cwd == str(box.work).encode() and carried == b"none"
    spares = [pid for pid in user_pids(box.uid) if b"bash" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(spares) == 1  # the one waiting for the next run
    await agent.call(Method.TEARDOWN)
    for _ in range(100):
        if not user_pids(box.uid):
            break
        await asyncio.sleep(0.02)
    assert not user_pids(box.uid)  # teardown takes the spare too
