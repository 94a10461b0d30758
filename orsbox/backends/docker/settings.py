"""A policy as Docker container settings: the one place a policy becomes docker-py `containers.create()` arguments.

Pure (no engine call), so it is tested without Docker. `engine.py` adds what is
per container (labels, mounts, environment) and creates it.

Every container gets orsbox's seccomp profile, `backends/docker/seccomp.json`: Docker
20.10's default profile (as this engine enforces it, checked syscall by syscall)
minus `io_uring_setup`, `io_uring_enter` and `io_uring_register`.

Network modes: `none` (loopback only), `allowlist` (a per-session internal Docker
network whose only way out is orsbox's egress proxy, which lets through the
`allow` entries alone) and `full` (a per-session bridge network, the host, other
sessions and link-local addresses blocked). `backends/network/networks.py` makes the
networks and firewall rules, `backends/network/egress.py` is the proxy; here a
container only joins its session's network.

`runtime = "runsc"` maps to orsbox's own Docker runtimes (`RUNSC_RUNTIMES`), which the
engine must have registered with the arguments `runtime_problem` checks.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...agent.layout import COMMAND_HOME, WORKSPACE
from ...policy import SandboxPolicy
from ..network.modes import ALLOWLIST_DNS, ALLOWLIST_DNS_OPTIONS, network_summary

SECCOMP_PROFILE = Path(__file__).parent / "seccomp.json"

#: Docker runtime name for `runtime = "runsc"`, per network mode, and the runtime arguments it must be
#: registered with: the agent dials in to the server's socket on its read-only mount, which needs
#: `--host-uds=open` (connect to host sockets; `all` also lets it create them, which the agent never does);
#: network "none" needs runsc's `--network=none`, a container on a Docker network `--network=host`
#: (gVisor's own netstack fails on such hosts).
RUNSC_RUNTIMES: dict[str, str] = {"none": "orsbox-runsc", "allowlist": "orsbox-runsc-host", "full": "orsbox-runsc-host"}
RUNSC_NETWORK_ARG = {"orsbox-runsc": "--network=none", "orsbox-runsc-host": "--network=host"}
HOST_UDS_ARGS = ("--host-uds=open", "--host-uds=all")

SESSION_NETWORK_PLACEHOLDER = "<the session's network>"


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
        # the agent's drop to the command user, reaping its processes, and emptying the bounding set of all it
        # starts (SETPCAP: the agent drops it too, first thing; agent/runtime/capabilities.py)
        "cap_add": ["SETUID", "SETGID", "KILL", "SETPCAP"],
        "security_opt": ["no-new-privileges", f"seccomp={seccomp_profile()}"],
        "read_only": not policy.root_writable,
        "tmpfs": {
            "/tmp": f"{tmp_flags},size={policy.tmp_size},mode=1777",
            WORKSPACE: f"rw,nosuid,nodev,exec,size={policy.workspace_size},uid={uid},gid={uid},mode=0755",
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


def sidecar_settings(policy: SandboxPolicy) -> dict[str, Any]:
    """A sidecar's container settings: the policy's limits and hardening, its image's own user and writable
    root (it runs its own service, not the agent), on a Docker network (so runsc's network-enabled runtime)."""
    settings = container_settings(policy)
    kept = ("init", "cap_drop", "security_opt", "pids_limit", "mem_limit", "memswap_limit", "nano_cpus", "ulimits",
            "log_config", "ipc_mode", "shm_size")
    return {**{key: settings[key] for key in kept},
            "runtime": "runc" if policy.runtime == "runc" else RUNSC_RUNTIMES["full"]}


def network_settings(policy: SandboxPolicy, network: str = SESSION_NETWORK_PLACEHOLDER) -> dict[str, Any]:
    """The network part of `container_settings`: none, or the session's own network (DNS cut for allowlist)."""
    if policy.network == "none":
        return {"network_mode": "none"}
    if policy.network == "full":
        return {"network": network}
    return {"network": network, "dns": ALLOWLIST_DNS, "dns_opt": ALLOWLIST_DNS_OPTIONS}


@functools.cache
def seccomp_profile() -> str:
    """orsbox's seccomp profile as compact JSON: the engine takes the profile's content, not a path."""
    return json.dumps(json.loads(SECCOMP_PROFILE.read_text()), separators=(",", ":"))


# ---------------------------------------------------------------- runtimes


def docker_runtime(policy: SandboxPolicy) -> str:
    """The Docker runtime name a policy's containers run with."""
    return "runc" if policy.runtime == "runc" else RUNSC_RUNTIMES[policy.network]


def runsc_registration(name: str) -> dict[str, Any]:
    """How the Docker runtime `name` must be registered in /etc/docker/daemon.json."""
    return {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", RUNSC_NETWORK_ARG[name], HOST_UDS_ARGS[0]]}


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


def runtime_check(engine_runtimes: Mapping[str, Sequence[str]]) -> Callable[[SandboxPolicy], str | None]:
    """`runtime_problem` on this engine's runtimes, for `PolicySet.runtime_problems` and `require_runtimes`."""
    return lambda policy: runtime_problem(policy, engine_runtimes)


# ---------------------------------------------------------------- orsbox policy explain


def explain_sections(policy: SandboxPolicy, *, full: bool = False) -> list[tuple[str, str]]:
    """What this backend makes of `policy`, as (title, text) sections for `orsbox policy explain`:
    its network, and its container settings (the seccomp profile abbreviated unless `full`)."""
    settings = container_settings(policy)
    if not full:
        settings["security_opt"] = [_abbreviate_seccomp(opt) for opt in settings["security_opt"]]
    return [("network", "\n".join(network_summary(policy))),
            ("container settings (docker-py containers.create() arguments, from container_settings)",
             json.dumps(settings, indent=2))]


def _abbreviate_seccomp(option: str) -> str:
    if not option.startswith("seccomp="):
        return option
    digest = hashlib.sha256(option.removeprefix("seccomp=").encode()).hexdigest()[:12]
    return (f"seccomp=<content of {SECCOMP_PROFILE} ({len(option) - 8} bytes, sha256 {digest}): "
            "Docker 20.10's default profile minus io_uring_*; --full prints it>")
