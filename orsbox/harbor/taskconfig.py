"""A Harbor task's `task.toml`, read with pydantic models that mirror Harbor's own (`harbor.models.task.config`).

The `harbor` package needs Python 3.12+, and orsbox runs on 3.11, so its schema is mirrored here rather
than imported: both versions in use, `version = "1.0"` (with the deprecated `memory`/`storage` size strings)
and `schema_version = "1.1"` (with the `[task]` package table). Unknown keys are accepted, as Harbor accepts
them; a wrong type or value is a `HarborTaskError` naming the file and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import HarborTaskError

NetworkMode = Literal["public", "no-network", "allowlist"]
MAX_TASK_TOML_BYTES = 256 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class VerifierConfig(_Section):
    timeout_sec: float = Field(default=600.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    user: str | int | None = None
    network_mode: NetworkMode | None = None
    allowed_hosts: list[str] = Field(default_factory=list)


class AgentConfig(_Section):
    timeout_sec: float | None = Field(default=None, gt=0)
    user: str | int | None = None
    network_mode: NetworkMode | None = None
    allowed_hosts: list[str] = Field(default_factory=list)


class SolutionConfig(_Section):
    env: dict[str, str] = Field(default_factory=dict)


class EnvironmentConfig(_Section):
    build_timeout_sec: float = Field(default=600.0, gt=0)
    docker_image: str | None = None
    cpus: float = Field(default=1, gt=0)
    memory_mb: int = Field(default=2048, gt=0)
    storage_mb: int = Field(default=10240, gt=0)
    gpus: int = Field(default=0, ge=0)
    allow_internet: bool = True
    network_mode: NetworkMode | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    # schema 1.0's size strings ("2G", "512M"), mapped onto memory_mb / storage_mb
    memory: str | None = None
    storage: str | None = None

    @model_validator(mode="after")
    def _sizes(self) -> EnvironmentConfig:
        updates = {}
        for old, new in (("memory", "memory_mb"), ("storage", "storage_mb")):
            text = getattr(self, old)
            if text is not None:
                updates[new] = size_mb(text)
        return self.model_copy(update=updates) if updates else self


class TaskConfig(_Section):
    schema_version: str = "1.1"
    task: dict[str, Any] | None = None  # 1.1: the package's name, description, authors
    metadata: dict[str, Any] = Field(default_factory=dict)
    verifier: VerifierConfig = VerifierConfig()
    agent: AgentConfig = AgentConfig()
    environment: EnvironmentConfig = EnvironmentConfig()
    solution: SolutionConfig = SolutionConfig()
    source: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _version_renamed(cls, data: Any) -> Any:
        """Schema 1.0 says `version`; 1.1 `schema_version`."""
        if isinstance(data, dict) and "version" in data:
            data = dict(data)
            data.setdefault("schema_version", str(data.pop("version")))
        return data


def size_mb(text: str) -> int:
    """Harbor's size strings: "2G", "512M", "1024K" -> MiB."""
    value = str(text).strip().upper().removesuffix("B")
    factors = {"G": 1024.0, "M": 1.0, "K": 1 / 1024}
    if not value or value[-1] not in factors:
        raise ValueError(f"{text!r} is not a size like 2G or 512M")
    try:
        return int(float(value[:-1]) * factors[value[-1]])
    except ValueError:
        raise ValueError(f"{text!r} is not a size like 2G or 512M") from None


def read_small_file(path: Path, limit: int) -> str:
    """A task's file as text (UnicodeDecodeError if it is not UTF-8); HarborTaskError if it cannot be read or
    is larger than `limit` bytes."""
    try:
        if path.stat().st_size > limit:
            raise HarborTaskError(f"{path}: larger than {limit} bytes")
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HarborTaskError(f"{path}: {exc.strerror}") from None


def read_task_config(path: Path) -> TaskConfig:
    """`path` (a task.toml) as a TaskConfig; HarborTaskError naming the file and the field if it is not one."""
    try:
        data = tomllib.loads(read_small_file(path, MAX_TASK_TOML_BYTES))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HarborTaskError(f"{path}: not valid TOML: {exc}") from None
    try:
        return TaskConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or "task.toml"
        raise HarborTaskError(f"{path}: {field}: {error['msg']}") from None
