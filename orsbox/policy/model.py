"""One environment's sandbox policy: its fields, their hardened defaults, and how sizes and `allow` entries read.

A policy is data: the layers below read it. The Docker backend turns it into
container settings (`backends/docker/settings.py`), the network backend into a
session network and its egress proxy (`backends/network/`), and the agent
enforces `agent_limits()` itself. Paths and uids come from `agent/layout.py`,
which the agent reads too.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..agent import layout

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bytes(value: Any) -> int:
    """Sizes as Docker reads them: an int of bytes, or "512m", "1g", "64KiB" (binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512m or 1g")
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
    if not match:
        raise ValueError(f"{value!r} is not a size: use bytes or a number with k, m, g or t (binary units)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def size_text(size: int) -> str:
    """The shortest exact Docker-style size: 1073741824 -> 1g."""
    for unit, factor in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0)]

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
ALLOW_EXAMPLES = '"pypi.example.com:443", "*.example.com:443", "10.0.0.5:8080"'


def parse_allow_entry(entry: str) -> tuple[str, int]:
    """An `allow` entry as (host, port): host is a lower-case name, `*.` + a name, or an IPv4 address.

    Raises ValueError saying what is wrong and what is allowed.
    """
    host, sep, port_text = str(entry).strip().rpartition(":")
    host = host.lower().removesuffix(".")
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{entry!r} is not host:port with a port from 1 to 65535 (e.g. {ALLOW_EXAMPLES})")
    if host.startswith("[") or ":" in host:
        raise ValueError(f"{entry!r}: IPv6 addresses are not supported; use a name or an IPv4 address")
    name = host.removeprefix("*.")
    if re.fullmatch(r"[0-9.]+", name):
        if name != host:
            raise ValueError(f"{entry!r}: a wildcard takes a name (*.example.com), not an address")
        try:
            return str(ipaddress.IPv4Address(name)), int(port_text)
        except ValueError:
            raise ValueError(f"{entry!r}: {name!r} is not an IPv4 address") from None
    if len(name) > 253 or not _NAME.fullmatch(name) or name.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"{entry!r}: {name!r} is not a host name (e.g. {ALLOW_EXAMPLES})")
    return host, int(port_text)


def covers(domain: str, host: str) -> bool:
    """Whether the allowed `domain` (a name, or `*.name` for its sub-domains) includes the allow entry `host`."""
    if domain.startswith("*."):
        parent = domain[2:]
        name = host[2:] if host.startswith("*.") else host
        return (name == parent and host.startswith("*.")) or name.endswith("." + parent)
    return not host.startswith("*.") and host == domain


#: Fields that size the warm pool rather than shape a container.
POOL_FIELDS = {"pool_min", "pool_max", "pool_refill", "pool_idle"}

#: Memory that full tmpfs mounts must still leave to commands and the agent (bytes).
MEMORY_HEADROOM = 64 * 1024**2


class SandboxPolicy(BaseModel):
    """One environment's limits. Every field has a hardened default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # resources
    cpus: float = Field(1.0, gt=0, le=64, description="CPU cores (CFS quota)")
    memory: Bytes = Field(1024**3, description="memory limit, no swap (bytes or 512m, 1g)")
    pids: int = Field(256, ge=16, le=65536, description="maximum processes and threads in the container")
    nofile: int = Field(4096, ge=64, le=1048576, description="open files per process (ulimit -n)")
    tmp_size: Bytes = Field(256 * 1024**2, description="size of the /tmp tmpfs")
    workspace_size: Bytes = Field(512 * 1024**2, description=f"size of the {layout.WORKSPACE} tmpfs")
    home_size: Bytes = Field(64 * 1024**2, description="size of the command user's home tmpfs")
    shm_size: Bytes = Field(64 * 1024**2, description="size of the /dev/shm tmpfs (POSIX shared memory)")
    tmp_exec: bool = Field(False, description="allow executing files from /tmp")
    root_writable: bool = Field(False, description="the root file system is writable (its layer is not size-capped; "
                                                   "Harbor tasks get this, their images expect it)")
    # isolation
    network: Literal["none", "allowlist", "full"] = Field(
        "none", description="none: loopback only; allowlist: only the `allow` entries, through orsbox's egress "
        "proxy; full: a network of its own, the host, other sessions and link-local addresses blocked")
    allow: tuple[str, ...] = Field(
        (), description="host:port entries a network = \"allowlist\" session may reach: names, "
        "`*.example.com` wildcards, IPv4 addresses")
    runtime: Literal["runc", "runsc"] = Field(
        "runc", description="OCI runtime: runc, or runsc (gVisor) where the engine has orsbox's runsc runtimes")
    command_uid: int = Field(layout.COMMAND_UID, ge=1, le=65534, description="uid (and gid) commands run as")
    # time, in seconds
    setup_timeout: float = Field(60.0, gt=0, description="s from create until the environment is set up")
    call_timeout: float = Field(120.0, gt=0, description="s a command may run when the call gives no timeout")
    max_call_timeout: float = Field(600.0, gt=0, description="s a command may run at most, whatever the call asks")
    idle_timeout: float = Field(900.0, gt=0, description="s without requests before a session is reaped")
    max_lifetime: float = Field(6 * 3600.0, gt=0, description="s a session may live in all")
    # output
    output_cap: Bytes = Field(256 * 1024, description="bytes of command output returned per call (head + tail)")
    # admission
    max_sessions: int | None = Field(None, ge=1, description="live sessions of this environment at most (429 past it)")
    max_starting: int | None = Field(None, ge=1, description="containers of this environment started at once")
    fork_max_bytes: Bytes = Field(256 * 1024**2, description="bytes of files (as tar) a session may have to be "
                                  "copied by /fork")
    max_sandboxes: int = Field(0, ge=0, le=64, description="openreward sandboxes a session's environment may "
                               "have at once, through the sandbox API on its loopback (0: no sandbox API)")
    # warm pool
    pool_min: int = Field(0, ge=0, le=256, description="containers kept started and waiting for a session (0: none)")
    pool_max: int | None = Field(None, ge=0, le=256, description="the pool grows toward this while creates find it "
                                 "empty, and shrinks back to pool_min when unused; default: pool_min")
    pool_refill: int = Field(1, ge=1, le=32, description="pool containers of this environment started at once")
    pool_idle: float = Field(3600.0, gt=0, description="s an unused pool container may wait before it is replaced")

    @field_validator("allow")
    @classmethod
    def _allow_entries(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        """Each entry valid, written the one way the proxy compares it (lower case, no trailing dot)."""
        return tuple(dict.fromkeys(f"{host}:{port}" for host, port in map(parse_allow_entry, entries)))

    @model_validator(mode="after")
    def _allow_only_with_allowlist(self) -> SandboxPolicy:
        if self.allow and self.network != "allowlist":
            raise ValueError(f"allow lists what network = \"allowlist\" may reach, but network is "
                             f"{self.network!r}: set network = \"allowlist\" or remove allow (allow = [])")
        if self.network == "allowlist" and not self.allow:
            raise ValueError(f"network = \"allowlist\" needs at least one allow entry "
                             f"(e.g. allow = [{ALLOW_EXAMPLES}])")
        return self

    @model_validator(mode="after")
    def _tmpfs_fits_in_memory(self) -> SandboxPolicy:
        """tmpfs pages are charged to the container's memory: full disks must leave room to run."""
        disks = self.tmp_size + self.workspace_size + self.home_size + self.shm_size
        if disks + MEMORY_HEADROOM > self.memory:
            raise ValueError(
                f"tmp_size + workspace_size + home_size + shm_size = {size_text(disks)} must leave at least "
                f"{size_text(MEMORY_HEADROOM)} of memory ({size_text(self.memory)}) for commands and the agent: "
                "files in tmpfs are held in memory")
        return self

    @model_validator(mode="after")
    def _pool_bounds(self) -> SandboxPolicy:
        if self.pool_max is not None and self.pool_max < self.pool_min:
            raise ValueError(f"pool_max ({self.pool_max}) must be at least pool_min ({self.pool_min})")
        return self

    @property
    def pool_limit(self) -> int:
        """The most pool containers this environment may have waiting."""
        return self.pool_min if self.pool_max is None else self.pool_max

    def digest(self) -> str:
        """A short hash of what a container is started with, for its orsbox.policy label (pool sizing is not:
        changing it must not keep running sessions from being adopted)."""
        return hashlib.sha256(self.model_dump_json(exclude=POOL_FIELDS).encode()).hexdigest()[:12]

    def agent_limits(self) -> dict[str, Any]:
        """The limits the in-container agent enforces itself (`CommandLimits` fields)."""
        return {
            "uid": self.command_uid,
            "gid": self.command_uid,
            "default_timeout": self.call_timeout,
            "max_timeout": self.max_call_timeout,
            "output_cap": self.output_cap,
            "home": layout.COMMAND_HOME,
        }
