"""A Harbor dataset as an ORS environment: its tasks listed, each session started from its task's own image.

`dataset_environment` reads the dataset, finds each task's image by its hash tag (`orsbox build` made it)
and sizes each task's policy: `[environment]` cpus and memory_mb are given exactly when they fit the
dataset's policy (`sandbox_policies/<dataset>.toml` over default.toml: the caps), else a session of that
task is refused (400) saying why, never given more; the root file system is writable (Harbor images expect
it); `[agent].timeout_sec` plus the verifier's time bounds the session's lifetime. The task's tests stay on
the host until `submit`, when `verifier_files` reads them and they go with that call to the agent.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import ValidationError

from ..agent.authoring.harbor import HARBOR_ENTRYPOINT, HarborEnvironment
from ..backends.backend import Backend, EnvironmentImage, Sidecar
from ..catalog import EnvironmentInfo, JSONObject
from ..errors import BadRequest, HarborTaskError, ImageUnavailable, OrsboxError
from ..policy import SandboxPolicy
from ..policy.model import MEMORY_HEADROOM, size_text
from ..sandbox_api.mapping import image_allowed
from .dataset import Dataset, HarborTask, load_dataset
from .images import sidecar_image, task_image

log = structlog.get_logger()

MAX_TESTS_BYTES = 16 * 1024 * 1024  # a task's tests/ in all: they travel in one frame, as base64
MAX_TESTS_FILES = 5000
TMPFS_FIELDS = ("tmp_size", "workspace_size", "home_size", "shm_size")
FIND_TIMEOUT = 30.0  # s


@dataclass(frozen=True)
class ServedTask:
    """A task as served: its environment (own image, sized policy) and working directory, or why it cannot start."""

    task: HarborTask
    environment: EnvironmentInfo | None
    workdir: str | None = None  # the image's WORKDIR
    problem: str | None = None
    error: type[OrsboxError] = BadRequest


async def dataset_environment(backend: Backend, name: str, folder: Path, policy: SandboxPolicy,
                              base_map: Mapping[str, str], image_patterns: Sequence[str]) -> EnvironmentInfo | None:
    """The dataset `name` at `folder` as an environment, or None (logged) if it cannot be read at all."""
    try:
        dataset = await asyncio.to_thread(load_dataset, name, folder)
    except HarborTaskError as exc:
        log.error("environment_unavailable", env=name, reason=exc.detail)
        return None
    for problem in dataset.problems:
        log.error("harbor_task_left_out", env=name, reason=problem[:1000])
    tools = [spec.to_json() for spec in HarborEnvironment.tool_specs(shared=True)]
    splits = [{"name": split, "type": "test" if split == "test" else "train"} for split in dataset.tasks]
    tasks = {split: [{"id": task.id} for task in listed] for split, listed in dataset.tasks.items()}
    base = EnvironmentImage(name, "", HARBOR_ENTRYPOINT, None, (f"harbor:{folder}",), "")
    served: dict[str, ServedTask] = {}
    shared = EnvironmentInfo(base, policy, splits, tools, tasks, {split: True for split in tasks},
                             per_task=lambda task: _for_task(served, name, task))
    for task in dataset.all_tasks():
        served[task.id] = await _serve_task(backend, dataset, task, shared, base_map, image_patterns)
        if served[task.id].problem:
            log.warning("harbor_task_not_ready", env=name, task=task.id, reason=served[task.id].problem)
    ready = sum(entry.environment is not None for entry in served.values())
    log.info("environment_found", env=name, image=f"harbor:{folder}", tasks=len(served), ready=ready)
    left_out = f", {len(dataset.problems)} left out (malformed)" if dataset.problems else ""
    return dataclasses.replace(shared, note=f"{ready} of {len(served)} tasks can start{left_out}")


async def _serve_task(backend: Backend, dataset: Dataset, task: HarborTask, shared: EnvironmentInfo,
                      base_map: Mapping[str, str], image_patterns: Sequence[str]) -> ServedTask:
    try:
        policy = task_policy(shared.policy, task, dataset.name)
    except BadRequest as exc:
        return ServedTask(task, None, problem=exc.detail)
    image = task_image(dataset.name, task, base_map)
    if not image_allowed(image.tag, image_patterns):
        return ServedTask(task, None, problem=f"task {task.id!r}: its image {image.tag} matches none of the image "
                                              f"patterns ({', '.join(image_patterns)}; ORSBOX_IMAGE_PATTERNS)",
                          error=ImageUnavailable)
    try:
        found = await backend.find_image(image.tag, pull=False, timeout=FIND_TIMEOUT)
    except OrsboxError:
        return ServedTask(task, None, problem=f"task {task.id!r}: its image {image.tag} is not built (or is out of "
                                              f"date): run `orsbox build {dataset.name}` with this server's config",
                          error=ImageUnavailable)
    sidecars = []
    for service in task.sidecars:
        reference = sidecar_image(dataset.name, task, service, base_map)
        try:
            sidecar = await backend.find_image(reference, pull=False, timeout=FIND_TIMEOUT)
        except OrsboxError:
            problem = (f"task {task.id!r}: the image {reference} of its service {service.name!r} is not on this "
                       f"engine: run `orsbox build {dataset.name}`, or map it (harbor_base_map)")
            return ServedTask(task, None, problem=problem, error=ImageUnavailable)
        sidecars.append(Sidecar(service.name, sidecar.image_id, service.command, service.env))
    environment = EnvironmentInfo(
        EnvironmentImage(dataset.name, found.image_id, HARBOR_ENTRYPOINT, None, found.tags, ""), policy,
        shared.splits, shared.tools, shared.tasks, shared.listable,
        call_extras=lambda tool: verifier_extras(task, tool), sidecars=tuple(sidecars))
    return ServedTask(task, environment, workdir=found.workdir)


def _for_task(served: Mapping[str, ServedTask], dataset: str,
              task: JSONObject) -> tuple[EnvironmentInfo, JSONObject]:
    entry = served.get(str(task.get("id", "")))
    if entry is None:
        raise BadRequest(f"dataset {dataset!r} has no task {str(task.get('id'))[:200]!r}; "
                         f"its tasks: {', '.join(sorted(served))[:1000]}")
    if entry.environment is None:
        raise entry.error(entry.problem or "the task cannot be served")
    config = entry.task.config
    setup = {
        "id": entry.task.id,
        "instruction": entry.task.instruction,
        "workdir": entry.workdir if entry.workdir not in (None, "/") else None,
        "agent_timeout_sec": config.agent.timeout_sec,
        "verifier": {"timeout_sec": config.verifier.timeout_sec, "env": dict(config.verifier.env),
                     "user": config.verifier.user},
    }
    return entry.environment, setup


def task_policy(caps: SandboxPolicy, task: HarborTask, dataset: str) -> SandboxPolicy:
    """The task's `[environment]` resources within the dataset's policy, or BadRequest saying what is over."""
    wanted = task.config.environment
    memory = wanted.memory_mb * 1024**2
    where = f"sandbox_policies/{dataset}.toml (or default.toml)"
    if wanted.gpus:
        raise BadRequest(f"task {task.id!r} asks for {wanted.gpus} GPU(s) ([environment].gpus); this server has none")
    if wanted.cpus > caps.cpus or memory > caps.memory:
        raise BadRequest(f"task {task.id!r} asks for cpus = {wanted.cpus:g}, memory_mb = {wanted.memory_mb} "
                         f"(task.toml [environment]); the policy allows at most cpus = {caps.cpus:g}, memory = "
                         f"{size_text(caps.memory)}: ops may raise them in {where}")
    lifetime = caps.max_lifetime
    if task.config.agent.timeout_sec is not None:
        lifetime = min(lifetime, caps.setup_timeout + task.config.agent.timeout_sec
                       + task.config.verifier.timeout_sec + 60.0)
    try:
        return SandboxPolicy.model_validate({**caps.model_dump(), "cpus": wanted.cpus, "memory": memory,
                                             "root_writable": True, "max_lifetime": lifetime,
                                             **_tmpfs_within(caps, memory)})
    except ValidationError as exc:
        raise BadRequest(f"task {task.id!r}: its resources do not fit the policy: {exc.errors()[0]['msg']}") from None


def _tmpfs_within(policy: SandboxPolicy, memory: int) -> dict[str, int]:
    """The policy's tmpfs sizes, shrunk in proportion where a smaller memory cannot hold them all."""
    sizes = {name: getattr(policy, name) for name in TMPFS_FIELDS}
    room, total = memory - MEMORY_HEADROOM, sum(sizes.values())
    if total <= room:
        return sizes
    return {name: max(1024**2, size * room // total // 1024**2 * 1024**2) for name, size in sizes.items()}


async def verifier_extras(task: HarborTask, tool: str) -> JSONObject:
    """What goes with a call of `tool`: for `submit`, the task's tests/ (read now, from the host)."""
    if tool != "submit":
        return {}
    return {"delivered": await asyncio.to_thread(verifier_files, task.tests_dir)}


def verifier_files(folder: Path) -> JSONObject:
    """{"files": {relative path: base64}, "executable": [...]} of `folder`; symlinks and special files left out."""
    files: dict[str, str] = {}
    executable: list[str] = []
    total = 0
    for parent, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (Path(parent) / d).is_symlink() and d != "__pycache__")
        for name in sorted(names):
            path = Path(parent) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            total += len(data)
            if total > MAX_TESTS_BYTES or len(files) >= MAX_TESTS_FILES:
                raise BadRequest(f"{folder}: the tests are larger than {MAX_TESTS_BYTES} bytes or "
                                 f"{MAX_TESTS_FILES} files")
            rel = path.relative_to(folder).as_posix()
            files[rel] = base64.b64encode(data).decode()
            if path.stat().st_mode & 0o111:
                executable.append(rel)
    return {"files": files, "executable": executable}
