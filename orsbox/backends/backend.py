"""The sandbox seam: what a backend does, and the labels that carry orsbox's state.

The SessionManager talks to a `Backend`; only `sandbox/docker.py` knows Docker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..policy import SandboxPolicy

# Container labels: every container orsbox starts carries them; names live only here.
LABEL_MANAGED = "orsbox.managed"  # "1"
LABEL_SESSION = "orsbox.session"  # the client's X-Session-ID
LABEL_ENVIRONMENT = "orsbox.environment"  # also on environment images
LABEL_ENTRYPOINT = "orsbox.entrypoint"  # on images: module:Class of the Environment
LABEL_POLICY_NAME = "orsbox.policy"  # on images: policy file to use; on containers: policy digest
LABEL_NODE = "orsbox.node"
LABEL_CREATED = "orsbox.created"  # unix time
LABEL_AGENT = "orsbox.agent"  # agent protocol version
LABEL_ROLE = "orsbox.role"  # "session", "describe" or "network"
LABEL_NETWORK_MODE = "orsbox.network"  # on session networks: the policy's network mode


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
class SandboxSpec:
    """Everything needed to start one session's container."""

    session_id: str
    environment: EnvironmentImage
    policy: SandboxPolicy
    extra_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sandbox:
    """A started container and the host folder its agent socket lives in."""

    container_id: str
    name: str
    session_dir: Path

    @property
    def socket_path(self) -> Path:
        from ..agent.wire import SOCKET_NAME

        return self.session_dir / SOCKET_NAME


@dataclass(frozen=True)
class ManagedContainer:
    """A container carrying `orsbox.managed=1` and this node's label, as listed by the engine."""

    container_id: str
    name: str
    labels: dict[str, str]
    status: str  # "running", "exited", ...


class Backend(Protocol):
    runtimes: dict[str, list[str]]  # OCI runtimes the engine offers -> their registered arguments
    agent_digest: str  # identifies the agent package mounted into containers (discovery data depends on it)

    async def list_environment_images(self) -> list[EnvironmentImage]: ...
    async def describe(self, image: EnvironmentImage, policy: SandboxPolicy) -> dict[str, Any]: ...
    async def create(self, spec: SandboxSpec) -> Sandbox: ...
    async def is_running(self, sandbox: Sandbox) -> bool: ...
    async def remove(self, sandbox: Sandbox) -> None: ...  # idempotent, never raises; its network too
    async def restore(self, sandbox: Sandbox, policy: SandboxPolicy) -> None: ...  # adopted: its proxy again
    async def remove_orphan_networks(self, live_sessions: set[str]) -> None: ...  # of no live session
    def network_problem(self) -> str | None: ...  # why sessions cannot have networks of their own here
    async def list_managed(self) -> list[ManagedContainer]: ...
    def sandbox_of(self, container: ManagedContainer) -> Sandbox: ...
    async def remove_container(self, container_id: str) -> None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...
