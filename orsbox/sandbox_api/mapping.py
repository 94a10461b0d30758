"""`SandboxSettings` onto orsbox's policy: honoured up to the ops' `sandbox` policy, refused past it.

The policy file `sandbox_policies/sandbox.toml` (over `default.toml`) sets what sandboxes may have:
`machine_size` "cpu:mem" is given exactly when it fits its `cpus` and `memory` (else 400, never
silently more); `env` goes to every command; `block_network` or a `network` policy can narrow the
policy's network, never widen it. What orsbox cannot honour (sidecars, buckets, host aliases, GPU
sizes, presets, deny or path rules, audit mode) is refused by name rather than ignored.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from ..agent.wire import SANDBOX_ENTRYPOINT
from ..backends.backend import EnvironmentImage
from ..catalog import EnvironmentInfo
from ..errors import BadRequest, ImageRefused
from ..policy import SandboxPolicy
from ..policy.model import MEMORY_HEADROOM, covers, parse_allow_entry
from .models import CreateSandboxBody, NetworkPolicy

SANDBOX_POLICY = "sandbox"  # the policy file sandboxes get (sandbox.toml over default.toml)
SANDBOX_ENVIRONMENT = "sandbox"  # the environment label of sandbox containers
MAX_ENV_BYTES = 256 * 1024  # names and values of `env` together
TMPFS_FIELDS = ("tmp_size", "workspace_size", "home_size", "shm_size")  # held in the sandbox's memory
UNSUPPORTED = {"bucket_config": "bucket mounts", "sidecars": "sidecar containers", "host_aliases": "host aliases"}


@dataclass(frozen=True)
class SandboxPlan:
    """What a `/create_sandbox` asks for, as orsbox will run it."""

    image: str
    policy: SandboxPolicy
    env: dict[str, str]


def plan_sandbox(body: CreateSandboxBody, policy: SandboxPolicy, image_patterns: Sequence[str]) -> SandboxPlan:
    """The sandbox `body` asks for under `policy`; BadRequest (400) or ImageRefused (403) saying why not."""
    _refuse_unsupported(body)
    if not image_allowed(body.image, image_patterns):
        raise ImageRefused(f"image {body.image[:200]!r} matches none of the image patterns this server allows "
                           f"({', '.join(image_patterns)}); ops set them with ORSBOX_IMAGE_PATTERNS")
    cpus, memory = machine_size(body.machine_size)
    if cpus > policy.cpus or memory > policy.memory:
        raise BadRequest(f"machine_size {body.machine_size!r} asks for more than sandboxes may have here "
                         f"({policy.cpus:g} CPUs, {policy.memory / 1024**3:g} GiB: the {SANDBOX_POLICY} policy)")
    network, allow = sandbox_network(body, policy)
    try:
        sized = SandboxPolicy.model_validate({**policy.model_dump(), "cpus": cpus, "memory": memory,
                                              "network": network, "allow": allow, **_tmpfs_within(policy, memory)})
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise BadRequest(f"machine_size {body.machine_size!r} does not fit the {SANDBOX_POLICY} policy: {reason}") \
            from None
    return SandboxPlan(body.image, sized, _env(body.env))


def _tmpfs_within(policy: SandboxPolicy, memory: int) -> dict[str, int]:
    """The policy's tmpfs sizes, shrunk in proportion where a smaller machine's memory cannot hold them all."""
    sizes = {name: getattr(policy, name) for name in TMPFS_FIELDS}
    room = memory - MEMORY_HEADROOM
    total = sum(sizes.values())
    if total <= room:
        return sizes
    return {name: max(1024**2, size * room // total // 1024**2 * 1024**2) for name, size in sizes.items()}


def sandbox_environment(plan: SandboxPlan, image_id: str, tags: tuple[str, ...]) -> EnvironmentInfo:
    """The environment a sandbox session runs: its image with the agent in sandbox mode, its sized policy."""
    image = EnvironmentImage(SANDBOX_ENVIRONMENT, image_id, SANDBOX_ENTRYPOINT, None, tags or (plan.image,), "")
    return EnvironmentInfo(image, plan.policy, [], [], {}, {})


def request_label(body: CreateSandboxBody) -> str:
    """What a sandbox asked for, without `env` (it may hold secrets), for its container's label."""
    return json.dumps({"image": body.image, "machine_size": body.machine_size, "block_network": body.block_network,
                       "network": body.network.model_dump() if body.network else None}, separators=(",", ":"))


def asked_for_network(request: str | None) -> bool:
    """Whether a sandbox's request label holds a `network` policy (only those may get another)."""
    try:
        fields = json.loads(request or "null")
    except ValueError:
        return False
    return isinstance(fields, dict) and fields.get("network") is not None


def replan(request: str, policy: SandboxPolicy, image_patterns: Sequence[str]) -> SandboxPlan:
    """The plan a left-over sandbox's request label gives under today's policy (for adoption); raises
    ValueError (or BadRequest, ImageRefused) if the label is not one or no longer fits."""
    fields = json.loads(request)
    if not isinstance(fields, dict):
        raise ValueError("the sandbox label is not an object")
    return plan_sandbox(CreateSandboxBody.model_validate({**fields, "environment": ""}), policy, image_patterns)


def machine_size(text: str) -> tuple[float, int]:
    """(CPUs, memory bytes) of a "cpu:GiB" size."""
    if text.startswith("nvidia"):
        raise BadRequest(f"machine_size {text!r}: GPUs are not available on this server")
    cpu_text, sep, memory_text = text.partition(":")
    try:
        cpus, gib = float(cpu_text), float(memory_text)
    except ValueError:
        cpus = gib = -1.0
    if not sep or not 0 < cpus <= 64 or not 0 < gib <= 1024:
        raise BadRequest(f"machine_size {text[:32]!r} is not \"cpu:memory\" (e.g. \"1:2\": 1 CPU, 2 GiB)")
    return cpus, int(gib * 1024**3)


def sandbox_network(body: CreateSandboxBody, policy: SandboxPolicy) -> tuple[str, tuple[str, ...]]:
    """(network mode, allow entries) of the sandbox: the policy's, or narrower as the client asks."""
    if body.block_network and body.network is not None:
        raise BadRequest("block_network and network cannot both be set")
    if body.block_network:
        return "none", ()
    if body.network is None:
        return policy.network, policy.allow
    wanted = _allow_entries(body.network)
    if not wanted:
        return "none", ()
    if policy.network == "none":
        raise BadRequest(f"the {SANDBOX_POLICY} policy gives sandboxes no network; "
                         "create it with block_network=True or without network")
    return "allowlist", _within_policy(wanted, policy)


def allowlist_update(network: NetworkPolicy, policy: SandboxPolicy) -> tuple[str, ...]:
    """The allow entries `set_network` gives an allowlist sandbox: within the sandbox policy (empty: nothing)."""
    return _within_policy(_allow_entries(network), policy)


def image_allowed(image: str, patterns: Sequence[str]) -> bool:
    """Whether `image` (repository[:tag]) matches a pattern; a bare repository means its `latest`."""
    reference = image if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest"
    repository = reference.rsplit(":", 1)[0]
    return any(fnmatch.fnmatchcase(reference, p) or fnmatch.fnmatchcase(repository, p) for p in patterns)


def _refuse_unsupported(body: CreateSandboxBody) -> None:
    for field, what in UNSUPPORTED.items():
        if getattr(body, field):
            raise BadRequest(f"SandboxSettings.{field}: {what} are not supported by orsbox")
    unknown = sorted(name for name, value in (body.model_extra or {}).items() if value is not None)
    if unknown:
        raise BadRequest(f"SandboxSettings fields orsbox does not know: {', '.join(unknown)[:300]}")


def _allow_entries(network: NetworkPolicy) -> tuple[str, ...]:
    """Allow entries (HTTPS and HTTP ports) of a network policy made of plain allow rules."""
    if not network.enforce:
        raise BadRequest("network.enforce=False (audit mode) is not supported by orsbox: "
                         "its proxy enforces what it allows")
    if network.presets:
        raise BadRequest(f"network presets are not supported by orsbox ({', '.join(network.presets)[:200]}): "
                         "list the hosts as allow rules")
    entries: list[str] = []
    for rule in network.rules:
        if rule.action != "allow" or rule.path is not None or rule.methods is not None:
            raise BadRequest("orsbox's network rules are allow rules by host only (no deny, path or methods): "
                             f"{rule.action} {rule.host[:100]}")
        for port in (443, 80):
            entry = f"{rule.host.lower()}:{port}"
            try:
                parse_allow_entry(entry)
            except ValueError as exc:
                raise BadRequest(f"network rule host {rule.host[:100]!r}: {exc}") from None
            entries.append(entry)
    return tuple(dict.fromkeys(entries))


def _within_policy(wanted: tuple[str, ...], policy: SandboxPolicy) -> tuple[str, ...]:
    """The entries of `wanted` an allowlist policy permits (a host on the ports it allows there); a host the
    policy allows on no port is refused. A `full` policy permits them all."""
    if policy.network != "allowlist":
        return wanted
    kept = tuple(entry for entry in wanted if _within(entry, policy.allow))
    hosts = {entry.rsplit(":", 1)[0] for entry in wanted}
    refused = sorted(hosts - {entry.rsplit(":", 1)[0] for entry in kept})
    if refused:
        raise BadRequest(f"network rules ask for {', '.join(refused)[:300]}, which the {SANDBOX_POLICY} policy "
                         f"does not allow (it allows {', '.join(policy.allow)[:300]})")
    return kept


def _within(entry: str, allowed: Sequence[str]) -> bool:
    """Whether the allow entry `entry` is one the policy's `allowed` entries already permit."""
    host, port = parse_allow_entry(entry)
    for other in allowed:
        other_host, other_port = parse_allow_entry(other)
        if other_port == port and (other_host == host or covers(other_host, host)):
            return True
    return False


def _env(env: dict[str, str] | None) -> dict[str, str]:
    env = env or {}
    if sum(len(k) + len(v) for k, v in env.items()) > MAX_ENV_BYTES:
        raise BadRequest(f"env is larger than {MAX_ENV_BYTES} bytes")
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise BadRequest(f"env name {name[:100]!r} or its value is not a valid environment variable")
    return env
