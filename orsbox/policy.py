"""Sandbox policies: ops-owned limits per environment, and the container settings they become.

Resolution, per field: `sandbox_policies/<environment>.toml` (or the policy an
image's `orsbox.policy` label names) ▸ `sandbox_policies/default.toml` ▸ the
built-in hardened defaults of `SandboxPolicy`. A file that does not validate is
refused at start-up with its name, the field and what is allowed.

`container_settings(policy)` is the one place a policy becomes docker-py
`containers.create()` arguments; it is pure, so it is tested without Docker.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .errors import ConfigError

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


Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0)]


class SandboxPolicy(BaseModel):
    """One environment's limits. Every field has a hardened default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # resources
    cpus: float = Field(1.0, gt=0, le=64, description="CPU cores (CFS quota)")
    memory: Bytes = Field(1024**3, description="memory limit, no swap (bytes or 512m, 1g)")
    pids: int = Field(256, ge=16, le=65536, description="maximum processes and threads in the container")
    nofile: int = Field(4096, ge=64, le=1048576, description="open files per process (ulimit -n)")
    tmp_size: Bytes = Field(256 * 1024**2, description="size of the /tmp tmpfs")
    workspace_size: Bytes = Field(512 * 1024**2, description="size of the /workspace tmpfs")
    home_size: Bytes = Field(64 * 1024**2, description="size of the command user's home tmpfs")
    tmp_exec: bool = Field(False, description="allow executing files from /tmp")
    # isolation
    network: Literal["none"] = Field("none", description="network mode; only 'none' so far")
    runtime: Literal["runc"] = Field("runc", description="OCI runtime")
    command_uid: int = Field(1000, ge=1, le=65534, description="uid (and gid) commands run as")
    # time, in seconds
    setup_timeout: float = Field(60.0, gt=0, description="s from create until the environment is set up")
    call_timeout: float = Field(120.0, gt=0, description="s a command may run when the call gives no timeout")
    max_call_timeout: float = Field(600.0, gt=0, description="s a command may run at most, whatever the call asks")
    idle_timeout: float = Field(900.0, gt=0, description="s without requests before a session is reaped")
    max_lifetime: float = Field(6 * 3600.0, gt=0, description="s a session may live in all")
    # output
    output_cap: Bytes = Field(256 * 1024, description="bytes of command output returned per call (head + tail)")

    def digest(self) -> str:
        """A short hash of the policy, for the container's orsbox.policy label."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    def agent_limits(self) -> dict[str, Any]:
        """The limits the in-container agent enforces itself (`CommandLimits` fields)."""
        return {
            "uid": self.command_uid,
            "gid": self.command_uid,
            "default_timeout": self.call_timeout,
            "max_timeout": self.max_call_timeout,
            "output_cap": self.output_cap,
        }


COMMAND_HOME = "/home/user"


def container_settings(policy: SandboxPolicy) -> dict[str, Any]:
    """docker-py `containers.create()` arguments for the hardened container of `policy`."""
    uid = policy.command_uid
    # Docker's tmpfs defaults include noexec: say exec where it is meant.
    tmp_flags = "rw,nosuid,nodev," + ("exec" if policy.tmp_exec else "noexec")
    return {
        "init": True,
        "user": "0:0",
        "cap_drop": ["ALL"],
        "cap_add": ["SETUID", "SETGID", "KILL"],  # the agent's drop to the command user, and reaping its processes
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {
            "/tmp": f"{tmp_flags},size={policy.tmp_size},mode=1777",
            "/workspace": f"rw,nosuid,nodev,exec,size={policy.workspace_size},uid={uid},gid={uid},mode=0755",
            COMMAND_HOME: f"rw,nosuid,nodev,noexec,size={policy.home_size},uid={uid},gid={uid},mode=0700",
        },
        "pids_limit": policy.pids,
        "mem_limit": policy.memory,
        "memswap_limit": policy.memory,
        "nano_cpus": int(policy.cpus * 1e9),
        "ulimits": [
            {"Name": "nofile", "Soft": policy.nofile, "Hard": policy.nofile},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "log_config": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}},
        "network_mode": policy.network,
        "ipc_mode": "private",
        "runtime": policy.runtime,
        "hostname": "sandbox",
    }


# ---------------------------------------------------------------- policy files


class PolicySet:
    """The policy files of one folder, validated as a whole at start-up."""

    def __init__(self, overrides: dict[str, dict[str, Any]]) -> None:
        self._overrides = overrides  # policy name -> fields given in its file

    @classmethod
    def load(cls, folder: Path) -> PolicySet:
        """Read and validate every `*.toml` in `folder`; a missing folder means built-in defaults only."""
        overrides: dict[str, dict[str, Any]] = {}
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            try:
                data = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{path}: {exc}") from exc
            _validate(path, data)
            overrides[path.stem] = data
        policies = cls(overrides)
        for name in overrides:
            policies.resolve(name)  # a file valid alone may still clash with default.toml
        return policies

    def resolve(self, environment: str, policy_name: str | None = None) -> SandboxPolicy:
        """The policy of `environment`: its own file (or `policy_name`'s) ▸ default ▸ built-in."""
        fields = dict(self._overrides.get("default", {}))
        fields.update(self._overrides.get(policy_name or environment, {}))
        try:
            return SandboxPolicy.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(f"policy for {environment!r}: {_describe(exc)}") from exc


def _validate(path: Path, data: dict[str, Any]) -> None:
    try:
        SandboxPolicy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"field {'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']} (got {err.get('input')!r})"
        for err in exc.errors()
    )


def reference_markdown() -> str:
    """The policy fields as a Markdown table, for the README (a test keeps them in sync)."""
    rows = ["| field | default | meaning |", "| --- | --- | --- |"]
    for name, info in SandboxPolicy.model_fields.items():
        is_size = any(getattr(meta, "func", None) is parse_bytes for meta in info.metadata)
        default = format_bytes(info.default) if is_size else json.dumps(info.default)
        rows.append(f"| `{name}` | `{default}` | {info.description} |")
    return "\n".join(rows)


def format_bytes(size: int) -> str:
    """The shortest exact Docker-style size: 1073741824 -> "1g"."""
    for unit, factor in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if size % factor == 0:
            return f'"{size // factor}{unit}"' if unit else str(size)
    return str(size)
