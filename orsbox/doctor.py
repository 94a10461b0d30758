"""`orsbox doctor`: is this host ready for `orsbox serve`? One OK/FAIL line per check, and what to do.

    engine     the Docker engine answers at DOCKER_HOST (or the local socket)
    runtimes   runc; runsc (gVisor) registered as orsbox's runtimes, and whether a policy needs it
    cgroups    the version, and the memory, pids and cpu controllers session limits need
    iptables   the tools and root, which networked policies need
    disk       free space in the state dir and in Docker's root
    images     each environment image, and whether it describes (the catalog cache, else a describe run)
    port       the port serve will listen on: free, or an orsbox already answering there

Exit status 1 if any check fails. Checks that need the engine fail with it, saying so.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .config import Config
from .errors import OrsboxError
from .policy import PolicySet, SandboxPolicy

CGROUP_ROOT = Path("/sys/fs/cgroup")
NEEDED_CONTROLLERS = ("memory", "pids", "cpu")
MIN_FREE_BYTES = 2 * 1024**3
ENGINE_FIX = "start the engine (systemctl start docker, or dockerd &), or point DOCKER_HOST at its socket"


@dataclass(frozen=True)
class Check:
    ok: bool
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'}  {self.what}" + (f"\n        -> {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class EngineInfo:
    address: str
    version: str
    runtimes: dict[str, list[str]]
    cgroup_version: str | None
    root_dir: str | None


def doctor_command(config: Config, out: TextIO = sys.stdout) -> int:
    checks = run_checks(config)
    for check in checks:
        print(check.line(), file=out)
    failed = sum(not check.ok for check in checks)
    print(f"\n{len(checks) - failed} OK, {failed} FAIL", file=out)
    return 1 if failed else 0


def run_checks(config: Config) -> list[Check]:
    policies, problems = PolicySet.read(config.policies_dir)
    checks = [Check(not problems, f"policies in {config.policies_dir}: "
                    + ("valid" if not problems else "; ".join(problems)[:600]),
                    "" if not problems else "fix the files (orsbox policy check)")]
    engine, engine_check = engine_info()
    checks.append(engine_check)
    if engine is None:
        checks.append(Check(False, "runtimes, images, Docker's root: not checked (the engine does not answer)",
                            ENGINE_FIX))
    else:
        checks += runtime_checks(engine.runtimes, policies)
    checks += cgroup_checks(engine.cgroup_version if engine else None)
    checks.append(iptables_check(policies))
    checks += disk_checks(config.state_dir, engine.root_dir if engine else None)
    if engine is not None:
        checks += asyncio.run(image_checks(config, policies))
    checks.append(port_check(config.host, config.port))
    return checks


def engine_info() -> tuple[EngineInfo | None, Check]:
    import docker
    import docker.errors
    import requests

    address = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
            info, version = client.info(), client.version()
        finally:
            client.close()
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        return None, Check(False, f"engine: no Docker engine answers at {address} ({str(exc)[:300]})", ENGINE_FIX)
    runtimes = {name: list((spec or {}).get("runtimeArgs") or []) for name, spec in
                (info.get("Runtimes") or {}).items()}
    engine = EngineInfo(address, str(version.get("Version", "?")), runtimes, info.get("CgroupVersion"),
                        info.get("DockerRootDir"))
    return engine, Check(True, f"engine: Docker {engine.version} answers at {address} "
                               f"(storage {info.get('Driver', '?')}, cgroup driver {info.get('CgroupDriver', '?')})")


def runtime_checks(runtimes: Mapping[str, Sequence[str]], policies: PolicySet) -> list[Check]:
    """runc, and runsc as orsbox registers it; a missing runsc fails only if a policy asks for it."""
    from .backends.docker.settings import RUNSC_RUNTIMES, runtime_check, runtime_problem

    checks = [Check("runc" in runtimes, "runtime runc: " + ("registered" if "runc" in runtimes else "missing"),
                    "" if "runc" in runtimes else "install runc (the engine's default runtime)")]
    needed = policies.runtime_problems(runtime_check(runtimes))
    wants_runsc = any(policies.resolve(name).runtime == "runsc" for name in {"default", *policies.names()})
    for network, name in sorted({(n, r) for n, r in RUNSC_RUNTIMES.items() if n != "allowlist"}):
        problem = runtime_problem(SandboxPolicy.model_validate({"runtime": "runsc", "network": network}), runtimes)
        binary = shutil.which("runsc") or ("/usr/bin/runsc" if Path("/usr/bin/runsc").exists() else None)
        if problem is None:
            checks.append(Check(True, f"runtime runsc (gVisor) as {name}: registered"
                                      + ("" if binary else " (no runsc binary on this host's PATH)")))
        elif wants_runsc:
            checks.append(Check(False, f"runtime runsc (gVisor) as {name}: {problem.split(';')[0]}",
                                problem.split("; ", 1)[-1]))
        else:
            checks.append(Check(True, f"runtime runsc (gVisor) as {name}: not registered, and no policy asks for "
                                      "it (policies with runtime = \"runsc\" would be refused)"))
    for problem in needed:
        checks.append(Check(False, f"policy: {problem.split('; ')[0]}", "register the runtime, or change the policy"))
    return checks


def cgroup_checks(engine_version: str | None, root: Path = CGROUP_ROOT) -> list[Check]:
    """The cgroup version, and the controllers session limits use (memory, pids, cpu)."""
    unified = root / "cgroup.controllers"
    if unified.exists():
        version = "2"
        have = set(unified.read_text().split())
    else:
        version = "1"
        have = {name for name in NEEDED_CONTROLLERS if (root / name).is_dir()}
    missing = [name for name in NEEDED_CONTROLLERS if name not in have]
    engine = f", the engine says v{engine_version}" if engine_version else ""
    return [Check(not missing, f"cgroups: v{version}{engine}; controllers "
                  + (", ".join(NEEDED_CONTROLLERS) + " present" if not missing else f"missing: {', '.join(missing)}"),
                  "" if not missing else "enable them (kernel cmdline cgroup_enable=memory, "
                  "or systemd.unified_cgroup_hierarchy=1 and cgroup.subtree_control)")]


def iptables_check(policies: PolicySet) -> Check:
    from .backends.network.networks import Firewall

    problem = Firewall.problem()
    if problem is None:
        return Check(True, "iptables: present, and orsbox runs as root (networked policies can be firewalled)")
    networked = policies.network_problems(problem)
    if networked:
        return Check(False, f"iptables: {problem}", "install iptables and run orsbox serve as root, or use "
                     "network = \"none\" policies")
    return Check(True, f"iptables: {problem} (no policy has a network, so none is needed)")


def disk_checks(state_dir: Path, docker_root: str | None) -> list[Check]:
    checks = [_free(f"state dir {state_dir}", state_dir)]
    if docker_root:
        checks.append(_free(f"Docker's root {docker_root}", Path(docker_root)))
    return checks


def _free(what: str, path: Path) -> Check:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        usage = shutil.disk_usage(existing)
    except OSError as exc:
        return Check(False, f"disk: {what}: cannot be read ({exc.strerror})", "run doctor as the user serve runs as")
    free = usage.free / 1024**3
    ok = usage.free >= MIN_FREE_BYTES and usage.free >= usage.total * 0.05
    return Check(ok, f"disk: {what}: {free:.1f} GiB free of {usage.total / 1024**3:.1f} GiB",
                 "" if ok else "free some space (docker system prune, old session folders)")


async def image_checks(config: Config, policies: PolicySet) -> list[Check]:
    """Each environment image the server would serve, and whether it describes (as serve would, cached)."""
    from .backends.docker.engine import DockerBackend
    from .catalog import _admitted, _described, _newest_per_name

    try:
        backend = await DockerBackend.connect(state_dir=config.state_dir, node_id=config.node_id,
                                              timeout=config.docker_timeout, pool_size=2)
    except (OrsboxError, OSError) as exc:
        return [Check(False, f"images: not checked ({getattr(exc, 'detail', exc)})", ENGINE_FIX)]
    checks = []
    (config.state_dir / "catalog").mkdir(parents=True, exist_ok=True)
    try:
        images = [i for i in await backend.list_environment_images() if _admitted(i, config.image_patterns)]
        if not images:
            checks.append(Check(False, f"images: no environment image matches {config.image_patterns}",
                                "build the examples: orsbox build"))
        for image in _newest_per_name(images):
            try:
                data = await _described(backend, image, policies.resolve(image.name, image.policy_name),
                                        config.state_dir / "catalog")
            except OrsboxError as exc:
                checks.append(Check(False, f"image {image.tags[0]}: does not describe: {str(exc.detail)[:400]}",
                                    f"fix the environment, then orsbox build {image.name} --force"))
                continue
            tasks = sum(map(len, data.get("tasks", {}).values()))
            checks.append(Check(True, f"image {image.tags[0]}: environment {image.name!r} describes "
                                      f"({tasks} tasks, {len(data.get('tools', []))} tools)"))
    finally:
        await backend.close()
    return checks


def port_check(host: str, port: int) -> Check:
    """Free, or an orsbox answering /health there; anything else listening is a FAIL."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        with socket.create_connection((target, port), timeout=2):
            pass
    except OSError:
        return Check(True, f"port {host}:{port}: free")
    url_host = f"[{target}]" if ":" in target else target
    try:
        with urllib.request.urlopen(f"http://{url_host}:{port}/health", timeout=3) as response:
            answer: Any = json.loads(response.read())
    except (OSError, ValueError) as exc:
        answer = getattr(exc, "code", None)
    if isinstance(answer, dict) and "status" in answer:
        return Check(True, f"port {host}:{port}: an orsbox answers there ({answer['status']})")
    return Check(False, f"port {host}:{port}: in use by something that is not orsbox",
                 "stop it, or serve on another port (--port / ORSBOX_PORT)")
