"""Sandbox policies: ops-owned limits per environment, and the container settings they become.

Resolution, per field: `sandbox_policies/<environment>.toml` (or the policy an
image's `orsbox.policy` label names) ▸ `sandbox_policies/default.toml` ▸ the
built-in hardened defaults of `SandboxPolicy`. A file that does not validate is
refused at start-up with its name, the field and what is allowed.

`container_settings(policy)` is the one place a policy becomes docker-py
`containers.create()` arguments; it is pure, so it is tested without Docker.
`explain()` says where each value came from, and `PolicySet.problems()` checks
a whole folder (both behind `orsbox policy explain|check`).

Every container gets orsbox's seccomp profile, `backends/docker/seccomp.json`: Docker
20.10's default profile (as this engine enforces it, checked syscall by syscall)
minus `io_uring_setup`, `io_uring_enter` and `io_uring_register`.

Network modes: `none` (loopback only), `allowlist` (a per-session internal Docker
network whose only way out is orsbox's egress proxy, which lets through the
`allow` entries alone) and `full` (a per-session bridge network, the host, other
sessions and link-local addresses blocked). `backends/network/networks.py` makes the
networks and firewall rules, `backends/network/egress.py` is the proxy.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

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

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
ALLOW_EXAMPLES = '"pypi.org:443", "*.example.com:443", "10.0.0.5:8080"'


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
    shm_size: Bytes = Field(64 * 1024**2, description="size of the /dev/shm tmpfs (POSIX shared memory)")
    tmp_exec: bool = Field(False, description="allow executing files from /tmp")
    # isolation
    network: Literal["none", "allowlist", "full"] = Field(
        "none", description="none: loopback only; allowlist: only the `allow` entries, through orsbox's egress "
        "proxy; full: a network of its own, the host, other sessions and link-local addresses blocked")
    allow: tuple[str, ...] = Field(
        (), description="host:port entries a network = \"allowlist\" session may reach: names, "
        "`*.example.com` wildcards, IPv4 addresses")
    runtime: Literal["runc", "runsc"] = Field(
        "runc", description="OCI runtime: runc, or runsc (gVisor) where the engine has orsbox's runsc runtimes")
    command_uid: int = Field(1000, ge=1, le=65534, description="uid (and gid) commands run as")
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


#: Memory that full tmpfs mounts must still leave to commands and the agent (bytes).
MEMORY_HEADROOM = 64 * 1024**2

COMMAND_HOME = "/home/user"
SECCOMP_PROFILE = Path(__file__).parent / "backends" / "docker" / "seccomp.json"

#: Docker runtime name for `runtime = "runsc"`, per network mode, and the runtime arguments it must be
#: registered with: the agent's socket needs `--host-uds`; network "none" needs runsc's `--network=none`,
#: a container on a Docker network `--network=host` (gVisor's own netstack fails on such hosts).
RUNSC_RUNTIMES: dict[str, str] = {"none": "orsbox-runsc", "allowlist": "orsbox-runsc-host", "full": "orsbox-runsc-host"}
RUNSC_NETWORK_ARG = {"orsbox-runsc": "--network=none", "orsbox-runsc-host": "--network=host"}
HOST_UDS_ARGS = ("--host-uds=create", "--host-uds=all")

#: Network modes on a Docker network of their own: the subnets orsbox carves them from (one /29 each; the
#: firewall blocks the whole pool to every session), and the egress proxy's port on each network's gateway.
SESSION_SUBNET_POOL = "10.73.0.0/16"
SESSION_SUBNET_PREFIX = 29
PROXY_PORT = 3128
#: What an allowlist session's container uses as DNS server: its own loopback, where nothing answers, so
#: Docker's embedded DNS cannot forward a name out (the proxy resolves names, on the host).
ALLOWLIST_DNS = ["127.0.0.1"]
ALLOWLIST_DNS_OPTIONS = ["timeout:1", "attempts:1"]  # a name fails in 1 s instead of 10
SESSION_NETWORK_PLACEHOLDER = "<the session's network>"


def runsc_registration(name: str) -> dict[str, Any]:
    """How the Docker runtime `name` must be registered in /etc/docker/daemon.json."""
    return {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", RUNSC_NETWORK_ARG[name], HOST_UDS_ARGS[0]]}


@functools.cache
def seccomp_profile() -> str:
    """orsbox's seccomp profile as compact JSON: the engine takes the profile's content, not a path."""
    return json.dumps(json.loads(SECCOMP_PROFILE.read_text()), separators=(",", ":"))


def docker_runtime(policy: SandboxPolicy) -> str:
    """The Docker runtime name a policy's containers run with."""
    return "runc" if policy.runtime == "runc" else RUNSC_RUNTIMES[policy.network]


def runtime_problem(policy: SandboxPolicy, engine_runtimes: Mapping[str, Sequence[str]]) -> str | None:
    """Why the engine (runtime name -> its registered arguments) cannot run `policy`, or None."""
    name = docker_runtime(policy)
    if name == "runc":
        return None
    how = (f"register it in /etc/docker/daemon.json under \"runtimes\" as \"{name}\": "
           f"{json.dumps(runsc_registration(name))} and reload dockerd (kill -HUP $(pidof dockerd)); "
           "./scripts/test does this where it may")
    if name not in engine_runtimes:
        have = ", ".join(sorted(engine_runtimes)) or "none"
        return (f"runtime {policy.runtime!r} needs the Docker runtime {name!r}, which the engine lacks "
                f"(it has: {have}); {how}")
    args = list(engine_runtimes[name])
    for choices in ((RUNSC_NETWORK_ARG[name],), HOST_UDS_ARGS):
        if not any(arg in args for arg in choices):
            return (f"the Docker runtime {name!r} is registered with {args}, without {' or '.join(choices)}; {how}")
    return None


def container_settings(policy: SandboxPolicy, network: str = SESSION_NETWORK_PLACEHOLDER) -> dict[str, Any]:
    """docker-py `containers.create()` arguments for the hardened container of `policy`.

    `network` names the session's own Docker network (network modes other than "none").
    """
    uid = policy.command_uid
    # Docker's tmpfs defaults include noexec: say exec where it is meant.
    tmp_flags = "rw,nosuid,nodev," + ("exec" if policy.tmp_exec else "noexec")
    return {
        "init": True,
        "user": "0:0",
        "cap_drop": ["ALL"],
        "cap_add": ["SETUID", "SETGID", "KILL"],  # the agent's drop to the command user, and reaping its processes
        "security_opt": ["no-new-privileges", f"seccomp={seccomp_profile()}"],
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
            # POSIX message queues: none. Their byte budget belongs to the uid, which every session shares.
            {"Name": "msgqueue", "Soft": 0, "Hard": 0},
        ],
        "log_config": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}},
        **network_settings(policy, network),
        "ipc_mode": "private",
        "shm_size": policy.shm_size,  # /dev/shm: Docker mounts it nosuid,nodev,noexec
        "runtime": docker_runtime(policy),
        "hostname": "sandbox",
    }


def network_settings(policy: SandboxPolicy, network: str = SESSION_NETWORK_PLACEHOLDER) -> dict[str, Any]:
    """The network part of `container_settings`: none, or the session's own network (DNS cut for allowlist)."""
    if policy.network == "none":
        return {"network_mode": "none"}
    if policy.network == "full":
        return {"network": network}
    return {"network": network, "dns": ALLOWLIST_DNS, "dns_opt": ALLOWLIST_DNS_OPTIONS}


def proxy_environment(proxy_url: str) -> dict[str, str]:
    """The variables that send an allowlist session's HTTP(S) clients (pip, urllib, curl, git) to the proxy."""
    no_proxy = "localhost,127.0.0.1,::1"
    return {"HTTP_PROXY": proxy_url, "HTTPS_PROXY": proxy_url, "http_proxy": proxy_url, "https_proxy": proxy_url,
            "NO_PROXY": no_proxy, "no_proxy": no_proxy}


def network_summary(policy: SandboxPolicy) -> list[str]:
    """What the policy's network mode means for a session, for `orsbox policy explain`."""
    refused = ("loopback, link-local (169.254.0.0/16, the metadata address), this host's own addresses, "
               f"orsbox's session networks ({SESSION_SUBNET_POOL})")
    if policy.network == "none":
        return ["none: only loopback; no interface, no route, no DNS"]
    if policy.network == "full":
        return [f"full: a bridge network of its own per session (a /{SESSION_SUBNET_PREFIX} of "
                f"{SESSION_SUBNET_POOL}, inter-container traffic off), removed with the session",
                "  egress: what the host routes to, through NAT; DNS through Docker's embedded server",
                f"  blocked by orsbox's firewall rules (iptables INPUT and DOCKER-USER, comment orsbox:<network>): "
                f"{refused}, and the host's published ports"]
    return [f"allowlist: an internal Docker network of its own per session (a /{SESSION_SUBNET_PREFIX} of "
            f"{SESSION_SUBNET_POOL}), removed with the session",
            f"  egress only through orsbox's HTTP proxy on the network's gateway, port {PROXY_PORT} "
            "(CONNECT for TLS, absolute-URI requests for plain HTTP), set as HTTP(S)_PROXY for commands",
            f"  allowed: {', '.join(policy.allow)}; anything else is answered 403 and logged (egress_denied)",
            "  names are resolved by the proxy on the host; inside the container DNS fails (dns 127.0.0.1)",
            f"  refused whatever the list says (checked on the resolved address): {refused}",
            "  the firewall (iptables, comment orsbox:<network>) drops everything else from the network, "
            "the host's other ports included"]


# ---------------------------------------------------------------- policy files

BUILT_IN = "built-in"


class PolicySet:
    """The policy files of one folder, validated as a whole at start-up."""

    def __init__(self, overrides: dict[str, dict[str, Any]], files: dict[str, Path] | None = None) -> None:
        self._overrides = overrides  # policy name -> fields given in its file
        self._files = files or {}  # policy name -> its file

    @classmethod
    def load(cls, folder: Path) -> PolicySet:
        """Read and validate every `*.toml` in `folder`; a missing folder means built-in defaults only."""
        policies, problems = cls.read(folder)
        if problems:
            raise ConfigError("; ".join(problems))
        return policies

    @classmethod
    def read(cls, folder: Path) -> tuple[PolicySet, list[str]]:
        """The valid files of `folder`, and one line per problem: file, field, what is allowed."""
        overrides: dict[str, dict[str, Any]] = {}
        files: dict[str, Path] = {}
        problems: list[str] = []
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            try:
                data = tomllib.loads(path.read_text())
                SandboxPolicy.model_validate(data)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            except ValidationError as exc:
                problems.append(f"{path}: {_describe(exc)}")
                continue
            overrides[path.stem], files[path.stem] = data, path
        policies = cls(overrides, files)
        for name in overrides:
            try:
                policies.resolve(name)  # a file valid alone may still clash with default.toml
            except ConfigError as exc:
                problems.append(str(exc.detail))
        return policies, problems

    def names(self) -> list[str]:
        """The policy files there are, by name (`default` included if present)."""
        return sorted(self._overrides)

    def file(self, name: str) -> Path | None:
        return self._files.get(name)

    def fields_of(self, name: str) -> dict[str, Any]:
        """The fields policy file `name` sets (none if there is no such file)."""
        return dict(self._overrides.get(name, {}))

    def resolve(self, environment: str, policy_name: str | None = None) -> SandboxPolicy:
        """The policy of `environment`: its own file (or `policy_name`'s) ▸ default ▸ built-in."""
        fields = dict(self._overrides.get("default", {}))
        fields.update(self._overrides.get(policy_name or environment, {}))
        try:
            return SandboxPolicy.model_validate(fields)
        except ValidationError as exc:
            own = self._files.get(policy_name or environment) or f"policy for {environment!r}"
            raise ConfigError(f"{own} (with default.toml): {_describe(exc)}") from exc

    def runtime_problems(self, engine_runtimes: Mapping[str, Sequence[str]]) -> list[str]:
        """Policies (default and every file) the engine cannot run, one line each."""
        problems = []
        for name in sorted({"default", *self._overrides}):
            problem = runtime_problem(self.resolve(name), engine_runtimes)
            if problem:
                problems.append(f"{self._files.get(name) or 'built-in defaults'}: {problem}")
        return problems

    def network_problems(self, firewall_problem: str | None) -> list[str]:
        """Policies (default and every file) with a network of their own, where the host cannot firewall one."""
        if firewall_problem is None:
            return []
        return [f"{self._files.get(name) or 'built-in defaults'}: network = {policy.network!r}: {firewall_problem}"
                for name in sorted({"default", *self._overrides})
                if (policy := self.resolve(name)).network != "none"]

    def require_runtimes(self, engine_runtimes: Mapping[str, Sequence[str]]) -> None:
        """Refuse (at start-up) policies that ask for a runtime the engine does not have."""
        problems = self.runtime_problems(engine_runtimes)
        if problems:
            raise ConfigError("; ".join(problems))

    def require_network(self, firewall_problem: str | None) -> None:
        """Refuse (at start-up) policies with a network of their own where orsbox cannot set firewall rules."""
        problems = self.network_problems(firewall_problem)
        if problems:
            raise ConfigError("; ".join(problems))


def explain(policies: PolicySet, environment: str, policy_name: str | None = None) -> list[tuple[str, Any, str]]:
    """Each field of `environment`'s policy as (field, value, source): its file, default.toml or built-in."""
    policy = policies.resolve(environment, policy_name)
    own = policy_name or environment
    layers = [(policies.file(name), policies.fields_of(name)) for name in (own, "default")]
    rows = []
    for name in SandboxPolicy.model_fields:
        source = next((str(path) for path, fields in layers if path is not None and name in fields), BUILT_IN)
        rows.append((name, getattr(policy, name), source))
    return rows


def format_value(name: str, value: Any) -> str:
    """A policy value as it would be written in a policy file (sizes in binary units)."""
    info = SandboxPolicy.model_fields[name]
    if any(getattr(meta, "func", None) is parse_bytes for meta in info.metadata):
        return format_bytes(value)
    return json.dumps(value)


def _describe(exc: ValidationError) -> str:
    return "; ".join(_describe_one(err) for err in exc.errors())


def _describe_one(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        known = ", ".join(SandboxPolicy.model_fields)
        return f"field {where}: unknown field (allowed fields: {known})"
    if not where:  # a check across fields
        return str(err["msg"]).removeprefix("Value error, ")
    info = SandboxPolicy.model_fields.get(where)
    meaning = f" [{where}: {info.description}]" if info else ""
    return f"field {where}: {err['msg']} (got {err.get('input')!r}){meaning}"


def reference_markdown() -> str:
    """The policy fields as a Markdown table, for the README (a test keeps them in sync)."""
    rows = ["| field | default | meaning |", "| --- | --- | --- |"]
    for name, info in SandboxPolicy.model_fields.items():
        rows.append(f"| `{name}` | `{format_value(name, info.default)}` | {info.description} |")
    return "\n".join(rows)


def size_text(size: int) -> str:
    """The shortest exact Docker-style size: 1073741824 -> 1g."""
    for unit, factor in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def format_bytes(size: int) -> str:
    """A size as a policy file would say it: 1073741824 -> "1g" (quoted), 100 -> 100."""
    text = size_text(size)
    return text if text.isdigit() else f'"{text}"'


# ---------------------------------------------------------------- orsbox policy explain


def explanation(policies: PolicySet, environment: str, policy_name: str | None = None, *,
                full: bool = False) -> str:
    """`orsbox policy explain`'s report: each value and its source, the container settings, the agent limits."""
    policy = policies.resolve(environment, policy_name)
    own = policy_name or environment
    chain = [str(policies.file(name) or f"{name}.toml (no such file)") for name in dict.fromkeys([own, "default"])]
    lines = [f"resolution: {' ▸ '.join([*chain, BUILT_IN])}", ""]
    rows = [(name, format_value(name, value), source) for name, value, source in explain(policies, environment,
                                                                                         policy_name)]
    width = max(len(name) for name, _, _ in rows), max(len(value) for _, value, _ in rows)
    lines += [f"{'field':<{width[0]}}  {'value':<{width[1]}}  source"]
    lines += [f"{name:<{width[0]}}  {value:<{width[1]}}  {source}" for name, value, source in rows]
    settings = container_settings(policy)
    if not full:
        settings["security_opt"] = [_abbreviate_seccomp(opt) for opt in settings["security_opt"]]
    lines += ["", "network:", *network_summary(policy)]
    lines += ["", "container settings (docker-py containers.create() arguments, from container_settings):",
              json.dumps(settings, indent=2),
              "", "agent limits (enforced by the agent inside the container):",
              json.dumps(policy.agent_limits(), indent=2)]
    return "\n".join(lines)


def _abbreviate_seccomp(option: str) -> str:
    if not option.startswith("seccomp="):
        return option
    digest = hashlib.sha256(option.removeprefix("seccomp=").encode()).hexdigest()[:12]
    return (f"seccomp=<content of {SECCOMP_PROFILE} ({len(option) - 8} bytes, sha256 {digest}): "
            "Docker 20.10's default profile minus io_uring_*; --full prints it>")
