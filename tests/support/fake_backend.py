"""A backend without containers: the real agent (`python -m orsbox.agent`) as a local process per sandbox.

It fills the same `Backend` slot as the Docker backend, so the whole server
(routes, sessions, channel, agent) runs for real; only the container is missing.
As there, the server listens in each sandbox's folder and the agent dials in.
For the fast tier: protocol, discovery, admission and SSE tests that need no Docker.
Its environments (`fake_envs.py`) never run commands, since there is no sandbox
around them, and the agent's command uid is one no host process uses.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from orsbox.agent.layout import SOCKET_NAME
from orsbox.agent.runtime.procfs import user_pids
from orsbox.agent.wire import frame_limit
from orsbox.backends.backend import (
    EnvironmentImage,
    FoundImage,
    Leftover,
    Sandbox,
    SandboxRef,
    SandboxSpec,
    SandboxStats,
    parse_describe_output,
)
from orsbox.backends.channel import open_channel
from orsbox.backends.session_folder import AgentListener, remove_folder
from orsbox.errors import ImageUnavailable, SandboxError
from orsbox.policy import SandboxPolicy

ROOT = Path(__file__).resolve().parents[2]


def _unused_uid() -> int:
    """A uid no host process has, picked per test run: teardown kills every process of the command uid,
    so two runs on one host (or a run and a helper's) must not share one."""
    for candidate in range(60000 + os.getpid() % 4000, 65000):
        if not user_pids(candidate):
            return candidate
    raise RuntimeError("no unused uid on this host")


#: The uid the agent runs commands as (see `_unused_uid`).
UNUSED_UID = _unused_uid()

HOSTILE = "hostile:"  # entrypoints `hostile:MODE` start `hostile_agent.py MODE` instead of the agent
ENVIRONMENTS = {
    "echo": "tests.support.fake_envs:EchoEnvironment",
    "broken": "tests.support.fake_envs:BrokenSetupEnvironment",
    "slow": "tests.support.fake_envs:SlowSetupEnvironment",
}


@dataclass
class FakeSandbox:
    spec: SandboxSpec
    process: asyncio.subprocess.Process
    folder: Path
    created: float
    log: IO[bytes]  # the agent's stderr, as a container's log


class FakeBackend:
    """Sandboxes as local agent processes, each dialing in to a Unix socket in a temporary folder."""

    runtimes: dict[str, list[str]] = {"runc": []}  # noqa: RUF012 (the Backend protocol's attribute)
    agent_digest = "fake"

    def __init__(self, environments: dict[str, str] | None = None, *, start_delay: float = 0.0,
                 networks: bool = False) -> None:
        self.environments = environments or ENVIRONMENTS
        self.networks = networks  # accept policies with a network (the agent still runs with the host's)
        self.policy_labels: dict[str, str] = {}  # environment -> its image's orsbox.policy label
        self.allowlists: dict[str, tuple[str, ...]] = {}  # sandbox id -> the allowlist set_network gave it
        self.start_delay = start_delay  # s, before each start (a slow engine)
        self.fail_starts: str | None = None  # set: every start fails with this message (a broken engine)
        self.engine_up = True
        self.started = 0
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.image_versions: dict[str, str] = {}  # environment -> a suffix of its image id (a rebuilt image)
        self._ids = itertools.count(1)

    async def list_environment_images(self) -> list[EnvironmentImage]:
        return [EnvironmentImage(name=name, image_id=f"fake:{name}{self.image_versions.get(name, '')}",
                                 entrypoint=entrypoint,
                                 policy_name=self.policy_labels.get(name),
                                 tags=(f"fake/{name}:latest",), created="0")
                for name, entrypoint in self.environments.items()]

    async def find_image(self, reference: str, *, pull: bool, timeout: float) -> FoundImage:
        """Any `fake/…` image exists (a sandbox runs the agent on this host); others are missing."""
        if not reference.startswith("fake/"):
            raise ImageUnavailable(f"image {reference!r} is not on this engine and could not be pulled")
        return FoundImage(f"fake:{reference}", (reference,), None, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})

    async def describe(self, image: EnvironmentImage, policy: SandboxPolicy) -> dict[str, Any]:
        process = await asyncio.create_subprocess_exec(
            *self._agent("describe", image.entrypoint, policy), env=_agent_environment(), cwd="/",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, errors = await process.communicate()
        return parse_describe_output(image, process.returncode or 0, out, errors)

    async def start(self, spec: SandboxSpec, *, timeout: float) -> Sandbox:
        ref = SandboxRef(id=f"fake-{next(self._ids)}", name=f"fake-{spec.session_id[:40]}")
        try:
            await asyncio.sleep(self.start_delay)
            if self.fail_starts is not None:
                raise SandboxError(self.fail_starts)
            folder = Path(tempfile.mkdtemp(prefix="obf-", dir="/tmp"))
            with AgentListener.open(folder) as listener:
                agent_log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in remove())
                process = await asyncio.create_subprocess_exec(
                    *self._agent("serve", spec.environment.entrypoint, spec.policy),
                    "--socket", str(folder / SOCKET_NAME), env=_agent_environment(), cwd="/",
                    stdout=agent_log, stderr=agent_log)
                self.sandboxes[ref.id] = FakeSandbox(spec, process, folder, time.time(), agent_log)
                self.started += 1
                return await self._connect(ref, listener, timeout, spec.policy)
        except BaseException:
            await self.remove(ref)
            raise

    async def reattach(self, leftover: Leftover, policy: SandboxPolicy, *, timeout: float) -> Sandbox:
        with AgentListener.open(self.sandboxes[leftover.ref.id].folder) as listener:
            return await self._connect(leftover.ref, listener, timeout, policy)

    async def _connect(self, ref: SandboxRef, listener: AgentListener, timeout: float,
                       policy: SandboxPolicy) -> Sandbox:
        sandbox = self.sandboxes[ref.id]

        async def alive() -> bool:
            return sandbox.process.returncode is None

        channel, hello = await open_channel(listener, timeout=timeout, is_alive=alive,
                                            max_frame=frame_limit(policy.output_cap))
        return Sandbox(ref, channel, hello)

    async def remove(self, ref: SandboxRef) -> None:
        sandbox = self.sandboxes.pop(ref.id, None)
        if sandbox is None:
            return
        if sandbox.process.returncode is None:
            sandbox.process.kill()
        await sandbox.process.wait()
        sandbox.log.close()
        remove_folder(sandbox.folder.parent, sandbox.folder.name)

    def kill(self, session_id: str) -> None:
        """Kill a session's agent, as if its container died."""
        for sandbox in self.sandboxes.values():
            if sandbox.spec.session_id == session_id:
                sandbox.process.kill()

    async def list_leftovers(self) -> list[Leftover]:
        return [Leftover(ref=SandboxRef(id=ref_id, name=f"fake-{s.spec.session_id[:40]}"),
                         role="pool" if s.spec.pooled else "session",
                         session_id=s.spec.session_id, environment=s.spec.environment.name, owner=s.spec.owner,
                         created=s.created, running=s.process.returncode is None,
                         status="running" if s.process.returncode is None else "exited",
                         policy_digest=s.spec.policy.digest(), image_id=s.spec.environment.image_id,
                         sandbox_request=s.spec.sandbox_request)
                for ref_id, s in self.sandboxes.items()]

    async def stats(self, ref: SandboxRef) -> SandboxStats:
        """The agent process's own figures from /proc (no cgroup around it here: no limits)."""
        pid = self._sandbox(ref).process.pid
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            threads = len(os.listdir(f"/proc/{pid}/task"))
        except (OSError, IndexError, ValueError) as exc:
            raise SandboxError(f"container stats: the sandbox's process is gone ({exc})") from None
        ticks = os.sysconf("SC_CLK_TCK")
        return SandboxStats(cpu_seconds=(int(fields[11]) + int(fields[12])) / ticks,
                            memory_bytes=rss_pages * os.sysconf("SC_PAGE_SIZE"), memory_limit=None, memory_peak=None,
                            pids=threads, pids_limit=None)

    async def logs(self, ref: SandboxRef, *, tail: int, max_bytes: int) -> bytes:
        sandbox = self._sandbox(ref)
        data = os.pread(sandbox.log.fileno(), 1024 * 1024, 0)
        return b"".join(data.splitlines(keepends=True)[-tail:])[-max_bytes:]

    def _sandbox(self, ref: SandboxRef) -> FakeSandbox:
        sandbox = self.sandboxes.get(ref.id)
        if sandbox is None:
            raise SandboxError(f"no such container: {ref.name}")
        return sandbox

    async def remove_orphans(self, live_sessions: set[str]) -> None:
        return None  # its folders go with their sandboxes

    async def replace_allowlist(self, ref: SandboxRef, allow: tuple[str, ...]) -> None:
        self.allowlists[ref.id] = allow  # what a test can check: the fake has no proxy

    def network_problem(self) -> str | None:
        return None if self.networks else "the fake backend gives sessions no networks"

    async def ping(self) -> bool:
        return self.engine_up

    async def close(self) -> None:
        for ref_id in list(self.sandboxes):
            await self.remove(SandboxRef(id=ref_id, name=""))

    @staticmethod
    def _agent(mode: str, entrypoint: str, policy: SandboxPolicy) -> list[str]:
        """The real agent; for `hostile:MODE` entrypoints a compromised one (described as the echo environment)."""
        if entrypoint.startswith(HOSTILE):
            if mode == "serve":
                return [sys.executable, str(Path(__file__).with_name("hostile_agent.py")), entrypoint[len(HOSTILE):]]
            entrypoint = ENVIRONMENTS["echo"]
        limits = {**policy.agent_limits(), "uid": UNUSED_UID, "gid": UNUSED_UID}
        return [sys.executable, "-B", "-m", "orsbox.agent", mode, "--entrypoint", entrypoint,
                "--limits", json.dumps(limits)]


def _agent_environment() -> dict[str, str]:
    """The agent imports `orsbox.agent` and the environments from this checkout, and nothing else of the host's."""
    keep = {name: os.environ[name] for name in ("PATH", "LANG", "HOME") if name in os.environ}
    return {**keep, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
