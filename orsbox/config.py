"""Server configuration: one pydantic model, from defaults, environment variables and flags."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


def default_state_dir() -> Path:
    """Where session folders and the catalog cache live (any length: the server binds its agent sockets
    through a descriptor of their folder, so the 108-byte cap on socket paths does not apply)."""
    return Path(os.environ.get("ORSBOX_STATE_DIR", "/var/lib/orsbox"))


class Config(BaseModel):
    """Everything the server needs to run; units in the field descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on")
    state_dir: Path = Field(default_factory=default_state_dir, description="session folders and catalog cache")
    policies_dir: Path = Field(Path("sandbox_policies"), description="folder of ops-owned policy files")
    default_environment: str | None = Field(None, description="environment for bare paths; default: first by name")
    environments: list[str] | None = Field(None, description="serve only these environments; default: every image")
    node_id: str = Field("local", description="written into every container's orsbox.node label")
    ready_wait: float = Field(25.0, gt=0, description="s a gated request waits for setup before 503")
    reap_interval: float = Field(5.0, gt=0, description="s between idle/lifetime sweeps")
    result_linger: float = Field(60.0, ge=0, description="s a finished call's result is kept for reconnects")
    sse_write_timeout: float = Field(30.0, gt=0, description="s an SSE write may wait on a client that reads nothing")
    keepalive: float = Field(10.0, gt=0, description="s between SSE keepalive comments")
    ended_memory: float = Field(3600.0, ge=0, description="s an ended session id is remembered (410, not 404)")
    docker_timeout: float = Field(60.0, gt=0, description="s per Docker engine call")
    docker_pool: int = Field(10, ge=1, description="Docker engine connections = executor threads")
    shutdown_timeout: float = Field(30.0, gt=0, description="s to tear sessions down at shutdown")
    teardown_timeout: float = Field(10.0, gt=0, description="s an environment's teardown() may take")
    idle_timeout: float | None = Field(None, gt=0, description="s; overrides every policy's idle_timeout (tests)")
    max_sessions: int = Field(64, ge=1, description="live sessions at most; past it /create answers 429")
    max_starting: int = Field(4, ge=1, description="containers started at once; later starts queue")
    max_body_bytes: int = Field(2 * 1024**2, ge=1024, description="bytes a request body may have (413 past it)")
    max_task_spec_bytes: int = Field(64 * 1024, ge=0, description="bytes of a /create task_spec as JSON (400 past it)")
    auth: bool = Field(True, description="every route but /health needs a valid X-API-Key (off: loopback only)")
    api_keys: list[SecretStr] = Field([], description="accepted API keys, besides the keys file's")
    keys_file: Path | None = Field(None, description="keys file of salted digests; default <state_dir>/api_keys.json")
    key_max_sessions: int | None = Field(None, ge=1, description="live sessions per API key at most (429 past it)")
    key_starts_per_minute: int | None = Field(None, ge=1, description="creates per API key per minute (429 past it)")
    image_patterns: list[str] = Field(["orsbox/*"], min_length=1,
                                      description="globs on image repository[:tag]: only matching images are served")
    pull_images: bool = Field(True, description="pull a sandbox's image the engine lacks (off: refuse it)")
    label_policies: list[str] = Field([], description="policies an image's orsbox.policy label may name")
    adopt: bool = Field(True, description="at start-up, serve again the sessions a previous run left running")
    keep_sessions: bool = Field(False, description="at shutdown, leave session containers for the next run")

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> Config:
        if not self.auth and not is_loopback(self.host):
            raise ValueError(f"authentication may only be off on a loopback address, not on {self.host!r}: "
                             "configure API keys (ORSBOX_API_KEYS or `orsbox keys add`) instead")
        return self

    @property
    def key_file_path(self) -> Path:
        return self.keys_file or self.state_dir / "api_keys.json"

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        """Defaults ▸ ORSBOX_* environment variables ▸ explicit overrides (flags)."""
        env = {
            "host": os.environ.get("ORSBOX_HOST"),
            "port": os.environ.get("ORSBOX_PORT"),
            "policies_dir": os.environ.get("ORSBOX_POLICIES"),
            "default_environment": os.environ.get("ORSBOX_DEFAULT_ENV"),
            "environments": _names(os.environ.get("ORSBOX_ENVIRONMENTS")),
            "node_id": os.environ.get("ORSBOX_NODE_ID"),
            "api_keys": _names(os.environ.get("ORSBOX_API_KEYS")),
            "keys_file": os.environ.get("ORSBOX_KEYS_FILE"),
            "image_patterns": _names(os.environ.get("ORSBOX_IMAGE_PATTERNS")),
            "label_policies": _names(os.environ.get("ORSBOX_LABEL_POLICIES")),
            "pull_images": os.environ.get("ORSBOX_PULL_IMAGES"),
        }
        values: dict[str, Any] = {k: v for k, v in env.items() if v is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _names(text: str | None) -> list[str] | None:
    """A comma-separated list of names, or None when unset or empty."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    return names or None
