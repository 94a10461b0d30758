"""The sandbox API's bodies, as openreward's client (0.1.167) sends them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EgressRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["allow", "deny"]
    host: str = Field(min_length=1, max_length=253)
    path: str | None = None
    methods: list[str] | None = None


class NetworkPolicy(BaseModel):
    """`SandboxNetworkPolicy`: egress rules, platform presets, and audit mode (`enforce=False`)."""

    model_config = ConfigDict(extra="forbid")

    rules: list[EgressRule] = Field(default_factory=list, max_length=256)
    presets: list[str] = Field(default_factory=list, max_length=32)
    enforce: bool = True


class CreateSandboxBody(BaseModel):
    """`SandboxSettings.model_dump()`, plus the creation's `task_id` when the client resumes it.

    Fields a newer client adds are kept (`extra`) so that one it sets can be refused by name.
    """

    model_config = ConfigDict(extra="allow")

    environment: str = Field(max_length=200)
    image: str = Field(min_length=1, max_length=500)
    machine_size: str = Field(max_length=32)
    env: dict[str, str] | None = None
    block_network: bool = False
    bucket_config: dict[str, Any] | None = None
    sidecars: list[dict[str, Any]] | None = None
    host_aliases: list[dict[str, Any]] | None = None
    network: NetworkPolicy | None = None
    task_id: str | None = Field(None, max_length=200)


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cmd: str
    timeout_s: float | None = Field(300.0, ge=0)
    max_bytes: int | None = Field(None, ge=0)
    shell: str = Field("/bin/bash", max_length=200)
    task_id: str | None = Field(None, max_length=200)


class StatAnswer(BaseModel):
    size: int
    sha256: str | None = None


class CommitAnswer(BaseModel):
    sha256: str
