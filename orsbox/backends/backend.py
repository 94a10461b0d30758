"""The backend seam: where a session's sandbox runs, as the SessionManager sees it.

A backend starts a sandbox for a `SandboxSpec` and hands back a `Sandbox` whose
agent has dialed in and answered `hello` (`channel.open_channel`), lists what a
previous run left behind as typed `Leftover` records (it alone reads its labels),
reattaches to one for adoption (listening again for its agent), and removes
sandboxes idempotently, and what no sandbox uses any more (`remove_orphans`). The Docker
backend (`backends/docker/engine.py`) is the real one; tests fill the same slot
with a fake that runs the agent as a local process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import SandboxError
from ..policy import SandboxPolicy
from .channel import AgentChannel, Hello


@dataclass(frozen=True)
class EnvironmentImage:
    """An image that serves an environment, as its labels describe it."""

    name: str
    image_id: str
    entrypoint: str
    policy_name: str | None
    tags: tuple[str, ...]
    created: str


@dataclass(frozen=True)
class FoundImage:
    """An image an openreward sandbox names: its id, tags, and the working directory and variables it sets."""

    image_id: str
    tags: tuple[str, ...]
    workdir: str | None
    env: dict[str, str]

    @classmethod
    def from_config(cls, image_id: str, tags: tuple[str, ...], config: dict[str, Any]) -> FoundImage:
        """From an engine's image config (`WorkingDir`, `Env` as NAME=value), read as untrusted strings."""
        workdir = config.get("WorkingDir")
        env: dict[str, str] = {}
        for item in config.get("Env") or ():
            name, sep, value = str(item).partition("=")
            if sep and name and "\0" not in item and len(env) < 256:
                env[name[:256]] = value[:8192]
        return cls(image_id, tags, workdir if isinstance(workdir, str) and workdir.startswith("/") else None, env)


@dataclass(frozen=True)
class Sidecar:
    """A container beside a session's own (a Harbor compose task's other services), on its private network."""

    service: str  # its host name on the network
    image_id: str
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to start one session's sandbox."""

    session_id: str
    environment: EnvironmentImage
    policy: SandboxPolicy
    owner: str  # who created the session (a digest, never a key)
    sandbox_request: str | None = None  # an openreward sandbox's request (JSON, no env), kept for adoption
    pooled: bool = False  # a warm pool's container: `session_id` names its pool slot, `owner` is ""
    sidecars: tuple[Sidecar, ...] = ()  # started first, on a network of the session's own; removed with it


@dataclass(frozen=True)
class SandboxRef:
    """Names one sandbox of the backend's (a container): enough to remove it."""

    id: str  # "" until the engine gave it one
    name: str


@dataclass
class Sandbox:
    """A started sandbox whose agent is connected and handshaken."""

    ref: SandboxRef
    channel: AgentChannel
    hello: Hello


@dataclass(frozen=True)
class SandboxStats:
    """A running sandbox's live figures, from its cgroup; None where the engine does not say."""

    cpu_seconds: float | None  # CPU time used since it started
    memory_bytes: int | None
    memory_limit: int | None
    memory_peak: int | None  # the most it has used (cgroup v1's max_usage)
    pids: int | None
    pids_limit: int | None


@dataclass(frozen=True)
class Leftover:
    """A sandbox of this node that the backend found (after a restart, or in a sweep), its labels parsed."""

    ref: SandboxRef
    role: str  # "session", "pool", "describe", ...
    session_id: str | None
    environment: str | None
    owner: str | None
    created: float  # unix time; 0 when unknown
    running: bool
    status: str  # the engine's word: "running", "exited", ...
    policy_digest: str | None  # the digest of the policy it was started with
    image_id: str | None  # the image it runs
    sandbox_request: str | None = None  # an openreward sandbox's request (JSON), untrusted


class Backend(Protocol):
    runtimes: dict[str, list[str]]  # OCI runtimes the engine offers -> their registered arguments
    agent_digest: str  # identifies the agent package mounted into sandboxes (discovery data depends on it)

    async def list_environment_images(self) -> list[EnvironmentImage]: ...
    async def describe(self, image: EnvironmentImage, policy: SandboxPolicy) -> dict[str, Any]: ...
    # An openreward sandbox's image by reference (pulled where missing and the engine can): its id and tags.
    async def find_image(self, reference: str, *, pull: bool, timeout: float) -> FoundImage: ...
    async def start(self, spec: SandboxSpec, *, timeout: float) -> Sandbox: ...  # removes what it made if it fails
    async def reattach(self, leftover: Leftover, policy: SandboxPolicy, *, timeout: float) -> Sandbox: ...
    async def remove(self, ref: SandboxRef) -> None: ...  # idempotent, never raises; its network too
    # An allowlist sandbox's egress from now on (connections opened under the old list are cut).
    async def replace_allowlist(self, ref: SandboxRef, allow: tuple[str, ...]) -> None: ...
    async def list_leftovers(self) -> list[Leftover]: ...
    async def stats(self, ref: SandboxRef) -> SandboxStats: ...  # its cgroup's figures now
    async def logs(self, ref: SandboxRef, *, tail: int, max_bytes: int) -> bytes: ...  # its last output lines
    async def remove_orphans(self, live_sessions: set[str]) -> None: ...  # networks, folders of no live session
    def network_problem(self) -> str | None: ...  # why sessions cannot have networks of their own here
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def parse_describe_output(image: EnvironmentImage, status: int, out: bytes, errors: bytes) -> dict[str, Any]:
    """The discovery data an agent run in `describe` mode printed (its last stdout line), or SandboxError."""
    text = out.decode(errors="replace").strip()
    try:
        data = json.loads(text.splitlines()[-1]) if text else None
    except ValueError:
        data = None
    if status == 0 and isinstance(data, dict) and "splits" in data:
        return data
    reason = data.get("error") if isinstance(data, dict) else None
    tail = errors.decode(errors="replace").strip()[-800:]
    raise SandboxError(f"environment {image.name!r} ({image.entrypoint}) cannot be described: "
                       f"{reason or tail or f'agent exited with status {status}'}")
