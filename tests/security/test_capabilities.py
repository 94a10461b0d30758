"""Capabilities and uids: a command has none and can get none back, the agent keeps only the three it uses,
and teardown kills the processes of the policy's command uid, whatever it is. On runc and on runsc.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import AsyncIterator, Callable
from typing import Any

import docker
import pytest

from orsbox.api import create_app
from orsbox.api.keys import BACKEND
from orsbox.backends.backend import SandboxRef
from orsbox.config import Config

from ..support.managed import session_containers
from ..support.ors import Ors
from .conftest import AGENT_PID

pytestmark = pytest.mark.docker

ZERO = "0000000000000000"
#: CAP_KILL, CAP_SETGID, CAP_SETUID: what the agent keeps (and nothing else, SETPCAP included).
AGENT_KEEPS = "00000000000000e0"


def capability_sets(status: str) -> dict[str, str]:
    """The Cap* lines of a /proc/<pid>/status. gVisor shows no CapAmb: it has no ambient set."""
    return dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))


def sets(runtime: str, **values: str) -> dict[str, str]:
    names = ["CapInh", "CapPrm", "CapEff", "CapBnd"] + (["CapAmb"] if runtime == "runc" else [])
    return {name: values.get(name, ZERO) for name in names}


@pytest.fixture
async def sid(ors: Ors) -> AsyncIterator[str]:
    session = await ors.new_session()
    await ors.prompt(session)
    yield session
    await ors.delete(session)


async def test_a_command_has_an_empty_bounding_set_and_no_capability_at_all(ors: Ors, sid: str, runtime: str) -> None:
    # the command itself, and the persistent shell it runs in
    status = await ors.bash(sid, "grep ^Cap /proc/self/status; echo; grep ^Cap /proc/$$/status")
    command, shell = status.text.split("\n\n")
    assert capability_sets(command) == sets(runtime)
    assert capability_sets(shell) == sets(runtime)


async def test_the_agent_keeps_only_setuid_setgid_and_kill(ors: Ors, sid: str, runtime: str) -> None:
    status = await ors.bash(sid, f"grep ^Cap /proc/{AGENT_PID}/status")
    assert capability_sets(status.text) == sets(runtime, CapPrm=AGENT_KEEPS, CapEff=AGENT_KEEPS)


#: Every way back to a capability or to root a command could try without capsh: each prints what it got.
REGAIN = r'''
import ctypes, errno, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
agent = int(sys.argv[1])

def refused(attempt):
    try:
        attempt()
        return "allowed"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def prctl(*args):
    return "allowed" if libc.prctl(*args) == 0 else errno.errorcode[ctypes.get_errno()]

def capset_inheritable(cap):
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)(0, 0, 1 << cap, 0, 0, 0)
    return "allowed" if libc.capset(header, data) == 0 else errno.errorcode[ctypes.get_errno()]

print(json.dumps({
    "setuid(0)": refused(lambda: os.setuid(0)),
    "setresuid(0, 0, 0)": refused(lambda: os.setresuid(0, 0, 0)),
    "setresgid(0, 0, 0)": refused(lambda: os.setresgid(0, 0, 0)),
    "setgroups([0])": refused(lambda: os.setgroups([0])),
    "kill(1, SIGKILL)": refused(lambda: os.kill(1, signal.SIGKILL)),
    "kill(agent, SIGKILL)": refused(lambda: os.kill(agent, signal.SIGKILL)),
    "kill(agent, SIGSTOP)": refused(lambda: os.kill(agent, signal.SIGSTOP)),
    "raise ambient SETUID": prctl(47, 2, 7, 0, 0),  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SETUID
    "inheritable SETUID": capset_inheritable(7),
    "bounding set": [cap for cap in range(64) if libc.prctl(23, cap, 0, 0, 0) == 1],  # PR_CAPBSET_READ
}))
'''


async def test_a_command_cannot_regain_root_a_capability_or_signal_the_agent(ors: Ors, sid: str,
                                                                          runtime: str) -> None:
    tried = await ors.bash(sid, f"python3 -c {shlex.quote(REGAIN)} {AGENT_PID}")
    results = json.loads(tried.text)
    assert results == {
        "setuid(0)": "EPERM", "setresuid(0, 0, 0)": "EPERM", "setresgid(0, 0, 0)": "EPERM",
        "setgroups([0])": "EPERM", "kill(1, SIGKILL)": "EPERM", "kill(agent, SIGKILL)": "EPERM",
        "kill(agent, SIGSTOP)": "EPERM",
        "raise ambient SETUID": "EPERM" if runtime == "runc" else "EINVAL",  # gVisor: no ambient set
        "inheritable SETUID": "EPERM",
        "bounding set": [],
    }
    assert (await ors.bash(sid, "echo the agent still answers")).text == "the agent still answers\n"


# ---------------------------------------------------------------- teardown and the policy's command uid

COMMAND_UID = 4321  # not the default 1000


@pytest.fixture
async def other_uid(runtime: str, aiohttp_client: Any, policies: Callable[..., Config]) -> Ors:
    """The bash environment with `command_uid = 4321`, on `runtime`."""
    policy = f"command_uid = {COMMAND_UID}\n" + ('runtime = "runsc"\n' if runtime == "runsc" else "")
    return Ors(await aiohttp_client(create_app(policies(bash=policy))))


def processes_by_uid(container: Any) -> list[tuple[int, str]]:
    """(uid, command) of every process in the container but the `ps` itself."""
    code, out = container.exec_run(["ps", "-eo", "uid=,args="])
    assert code == 0, out
    rows = [line.split(None, 1) for line in out.decode().splitlines() if line.strip()]
    return [(int(row[0]), row[1]) for row in rows if not row[1].startswith("ps -eo")]


async def test_teardown_kills_every_process_of_the_policys_command_uid(other_uid: Ors, engine: docker.DockerClient,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sid = await other_uid.new_session()
    # a background job of the persistent shell and a daemon that left its session: both outlive their call
    started = await other_uid.bash(sid, "sleep 1001 & setsid sleep 1002 </dev/null >/dev/null 2>&1 & "
                                        "sleep 0.2; id -u")
    assert started.text == f"{COMMAND_UID}\n"
    [container] = session_containers(engine, sid)
    before = processes_by_uid(container)
    assert {(COMMAND_UID, "sleep 1001"), (COMMAND_UID, "sleep 1002")} <= set(before)

    # what is left once the agent has torn down, just before the container is removed
    backend = other_uid.http.app[BACKEND]
    remove, after_teardown = backend.remove, []

    async def look_then_remove(ref: SandboxRef) -> None:
        after_teardown.extend(await asyncio.to_thread(processes_by_uid, container))
        await remove(ref)

    monkeypatch.setattr(backend, "remove", look_then_remove)
    await other_uid.delete(sid)
    assert after_teardown, "the container was not removed through the backend"
    assert [row for row in after_teardown if row[0] == COMMAND_UID] == []
    assert session_containers(engine, sid) == []
