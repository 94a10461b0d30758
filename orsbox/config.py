"""Server configuration: one pydantic model, resolved from flags ▸ environment ▸ config file ▸ defaults.

Every field has an environment variable (`ORSBOX_<FIELD>`, lists comma-separated; a few have shorter
names, `ENV_NAMES`) and a key of the same name in the TOML file `--config` or `ORSBOX_CONFIG` names.
`Config.resolve` also says where each value came from, for `orsbox config show`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .errors import ConfigError

#: Environment variables whose names are not ORSBOX_<FIELD>.
ENV_NAMES = {"policies_dir": "ORSBOX_POLICIES", "default_environment": "ORSBOX_DEFAULT_ENV"}
CONFIG_FILE_ENV = "ORSBOX_CONFIG"
SECRET_FIELDS = frozenset({"api_keys", "admin_keys"})


def default_state_dir() -> Path:
    """Where session folders and the catalog cache live (any length: the server binds its agent sockets
    through a descriptor of their folder, so the 108-byte cap on socket paths does not apply)."""
    return Path("/var/lib/orsbox")


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
    catalog_interval: float = Field(10.0, gt=0, description="s between checks of the engine's environment images "
                                    "(a change is served without a restart; SIGHUP reads them at once)")
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
    pool_memory: int = Field(4 * 1024**3, ge=0, description="bytes of memory limits the warm pools' waiting "
                             "containers may hold in all (each counted at its policy's memory)")
    max_body_bytes: int = Field(2 * 1024**2, ge=1024, description="bytes a request body may have (413 past it)")
    max_task_spec_bytes: int = Field(64 * 1024, ge=0, description="bytes of a /create task_spec as JSON (400 past it)")
    auth: bool = Field(True, description="every route but /health needs a valid X-API-Key (off: loopback only)")
    api_keys: list[SecretStr] = Field([], description="accepted API keys, besides the keys file's")
    admin_keys: list[SecretStr] = Field([], description="operator keys: the admin API and /metrics (not for clients)")
    event_inputs: bool = Field(False, description="session events carry tool inputs (truncated); off: names only")
    secrets_dir: Path | None = Field(None, description="per-environment operator secrets, <env>.toml (0600); "
                                     "default <state_dir>/secrets")
    keys_file: Path | None = Field(None, description="keys file of salted digests; default <state_dir>/api_keys.json")
    key_max_sessions: int | None = Field(None, ge=1, description="live sessions per API key at most (429 past it)")
    key_starts_per_minute: int | None = Field(None, ge=1, description="creates per API key per minute (429 past it)")
    image_patterns: list[str] = Field(["orsbox/*"], min_length=1,
                                      description="globs on image repository[:tag]: only matching images are served")
    pull_images: bool = Field(True, description="pull a sandbox's image the engine lacks (off: refuse it)")
    label_policies: list[str] = Field([], description="policies an image's orsbox.policy label may name")
    adopt: bool = Field(True, description="at start-up, serve again the sessions a previous run left running")
    keep_sessions: bool = Field(False, description="at shutdown, leave session containers for the next run")
    harbor_datasets: list[str] = Field([], description="Harbor datasets served as environments: NAME=FOLDER")
    harbor_base_map: list[str] = Field([], description="Harbor tasks' FROM images built from local ones instead: "
                                                       "IMAGE=LOCAL (explicit, for offline builds)")

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> Config:
        if not self.auth and not is_loopback(self.host):
            raise ValueError(f"authentication may only be off on a loopback address, not on {self.host!r}: "
                             "configure API keys (ORSBOX_API_KEYS or `orsbox keys add`) instead")
        return self

    @field_validator("harbor_datasets", "harbor_base_map")
    @classmethod
    def _pairs(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            name, sep, value = entry.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise ValueError(f"{entry!r} is not NAME=VALUE (e.g. example=/srv/datasets/example, "
                                 "ubuntu:24.04=orsbox/base:latest)")
        return [entry.strip() for entry in entries]

    @property
    def datasets(self) -> dict[str, Path]:
        """The Harbor datasets, by lower-case name."""
        return {name.strip().lower(): Path(folder.strip()) for name, _, folder in
                (entry.partition("=") for entry in self.harbor_datasets)}

    @property
    def base_map(self) -> dict[str, str]:
        return {source.strip(): local.strip() for source, _, local in
                (entry.partition("=") for entry in self.harbor_base_map)}

    @property
    def key_file_path(self) -> Path:
        return self.keys_file or self.state_dir / "api_keys.json"

    @property
    def secrets_path(self) -> Path:
        return self.secrets_dir or self.state_dir / "secrets"

    @classmethod
    def from_env(cls, config_file: Path | None = None, **flags: Any) -> Config:
        """Flags (None: not given) ▸ ORSBOX_* variables ▸ the config file ▸ defaults."""
        return cls.resolve(flags, config_file=config_file)[0]

    @classmethod
    def resolve(cls, flags: Mapping[str, Any], *, environ: Mapping[str, str] | None = None,
                config_file: Path | None = None) -> tuple[Config, dict[str, str]]:
        """The config, and each field's source ("flag", "env NAME", "file PATH", "default");
        a bad file or value is a ConfigError naming where it came from and the field."""
        environ = os.environ if environ is None else environ
        path = config_file or (Path(environ[CONFIG_FILE_ENV]) if environ.get(CONFIG_FILE_ENV) else None)
        layers: list[tuple[str, dict[str, Any]]] = [("default", {})]
        if path is not None:
            layers.append((f"file {path}", read_config_file(path)))
        for name in cls.model_fields:
            variable = env_name(name)
            if environ.get(variable, "").strip():
                layers.append((f"env {variable}", {name: _from_env(name, environ[variable])}))
        layers.append(("flag", {k: v for k, v in flags.items() if v is not None}))
        values: dict[str, Any] = {}
        sources = dict.fromkeys(cls.model_fields, "default")
        for source, layer in layers:
            values.update(layer)
            sources.update(dict.fromkeys(layer, source))
        try:
            return cls.model_validate(values), sources
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "config"
            where = sources.get(str(error["loc"][0]), "") if error["loc"] else ""
            raise ConfigError(f"{field}{f' ({where})' if where else ''}: {error['msg']}") from None

    def shown(self, sources: Mapping[str, str]) -> list[str]:
        """`orsbox config show`: one `name = value  # source` line per field, secrets masked."""
        lines = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in SECRET_FIELDS:
                value = [f"<{len(value)} key(s), masked>"] if value else []
            text = str(value) if isinstance(value, Path) else repr(value)
            lines.append(f"{name} = {text}  # {sources.get(name, 'default')}")
        return lines


def env_name(field: str) -> str:
    return ENV_NAMES.get(field, f"ORSBOX_{field.upper()}")


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML config file's settings; an unreadable file or an unknown key is a ConfigError."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    unknown = sorted(set(data) - set(Config.model_fields))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return data


def _from_env(field: str, text: str) -> Any:
    """A variable's text as the field takes it: lists are comma-separated."""
    annotation = Config.model_fields[field].annotation
    kinds = get_args(annotation) if get_origin(annotation) is not list else (annotation,)
    if get_origin(annotation) is list or any(get_origin(kind) is list for kind in kinds):
        return _names(text) or []
    return text.strip()


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
