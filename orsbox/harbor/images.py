"""Per-task images: each task's `environment/` built as `orsbox/harbor-<dataset>-<task>:<hash>`.

The hash covers the `environment/` folder (every file, as `orsbox build` hashes image folders), the base
mapping applied to it and this recipe, so an image is rebuilt only when its folder (or the mapping) changes.
The task's Dockerfile is built from a copy whose `FROM` lines are rewritten by ops' explicit base map
(`harbor_base_map = ["ubuntu:24.04=orsbox/base:latest"]`: never a silent substitution), followed by orsbox's
own last layer (`ORSBOX_LAYER`): the task's working directory is made the command user's, `/logs` root's,
and `/logs/verifier` the verifier's alone (0700), so the agent can neither plant a reward nor read one.
RUN steps have no network unless the operator agrees (`orsbox build --allow-network <dataset>`).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from ..agent.layout import COMMAND_UID, GRADER_UID
from ..errors import HarborTaskError, ImageBuildError
from ..images.engine import BuiltImage, Progress, connect, current, docker_build, finish
from ..images.hashing import context_inputs_hash, hash_tag
from .compose import Service
from .dataset import Dataset, HarborTask

#: Bump whenever ORSBOX_LAYER or the rewriting changes: every task image is rebuilt.
HARBOR_RECIPE = "harbor-1"

#: Appended to every task's Dockerfile (runs as root; $PWD is the task's WORKDIR).
ORSBOX_LAYER = f"""
# --- added by orsbox: the agent works in the task's directory; only the verifier writes /logs/verifier
USER root
RUN set -e; w="$PWD"; \\
    case "$w" in /|/bin*|/boot*|/dev*|/etc*|/lib*|/proc*|/sbin*|/sys*|/usr|/usr/bin*|/usr/lib*|/usr/sbin*|/var) ;; \\
      *) chown -R {COMMAND_UID}:{COMMAND_UID} "$w" ;; esac; \\
    rm -rf /logs/verifier /tests; mkdir -p /logs/verifier /logs/agent; \\
    chown 0:0 /logs; chmod 0755 /logs; chown {COMMAND_UID}:{COMMAND_UID} /logs/agent; \\
    chown {GRADER_UID}:{GRADER_UID} /logs/verifier; chmod 0700 /logs/verifier
"""

_FROM = re.compile(r"^(\s*FROM\s+)((?:--\S+\s+)*)(\S+)(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class TaskImage:
    """What a task's image is called and the hash that says it is current."""

    name: str  # `harbor-<dataset>-<task>`, the repository after orsbox/
    inputs_hash: str

    @property
    def tag(self) -> str:
        return hash_tag(self.name, self.inputs_hash)


def image_name(dataset: str, task_id: str) -> str:
    """A Docker repository name for the task: lower case, runs of other characters as one `-`."""
    raw = f"harbor-{dataset}-{task_id}".lower()
    return re.sub(r"[^a-z0-9]+", "-", raw).strip("-")[:200]


def task_image(dataset: str, task: HarborTask, base_map: Mapping[str, str]) -> TaskImage:
    """The task's image name and inputs hash (no engine needed: serve finds the image by its hash tag)."""
    sources = from_images(task) + [source for service in task.sidecars for source in (
        [service.image] if service.image else from_images(task, _service_dockerfile(service)))]
    used = sorted(f"{source}={base_map[source]}" for source in set(sources) if source in base_map)
    return TaskImage(image_name(dataset, task.id),
                     context_inputs_hash(task.environment_dir, "\n".join([HARBOR_RECIPE, *used])))


def sidecar_image(dataset: str, task: HarborTask, service: Service, base_map: Mapping[str, str]) -> str:
    """A sidecar's image: the tag it is built as (its hash is the task's), or its mapped `image`."""
    if service.image is not None:
        return base_map.get(service.image, service.image)
    main = task_image(dataset, task, base_map)
    return hash_tag(f"{main.name}-svc-{service.name}", main.inputs_hash)


def from_images(task: HarborTask, dockerfile: Path | None = None) -> list[str]:
    """The images the task's Dockerfile (or `dockerfile`) starts its stages from (earlier stages' names left out)."""
    stages: set[str] = set()
    images = []
    for line in _dockerfile(task, dockerfile).splitlines():
        match = _FROM.match(line)
        if match is None:
            continue
        image, rest = match.group(3), match.group(4).split()
        if image.lower() not in stages:
            images.append(image)
        if len(rest) >= 2 and rest[0].lower() == "as":
            stages.add(rest[1].lower())
    return images


def rewritten_dockerfile(task: HarborTask, base_map: Mapping[str, str], dockerfile: Path | None = None) -> str:
    """The task's Dockerfile with mapped FROM images, then orsbox's layer (not for a sidecar's `dockerfile`)."""
    lines = []
    for line in _dockerfile(task, dockerfile).splitlines():
        match = _FROM.match(line)
        if match is not None and match.group(3) in base_map:
            line = f"{match.group(1)}{match.group(2)}{base_map[match.group(3)]}{match.group(4)}"
        lines.append(line)
    return "\n".join(lines) + "\n" + ("" if dockerfile else ORSBOX_LAYER)


def _service_dockerfile(service: Service) -> Path:
    assert service.context is not None
    return service.context / service.dockerfile


def _dockerfile(task: HarborTask, dockerfile: Path | None = None) -> str:
    path = dockerfile or task.environment_dir / "Dockerfile"
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HarborTaskError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise HarborTaskError(f"{path}: not UTF-8 text") from None


@dataclass(frozen=True)
class BuildReport:
    """A dataset build: each task's image (built or current), and the tasks that failed, with why."""

    images: list[BuiltImage]
    failures: dict[str, str]
    seconds: dict[str, float]  # image tag -> build time (s) of the images built


def build_dataset(dataset: Dataset, base_map: Mapping[str, str], *, client: docker.DockerClient | None = None,
                  progress: Progress = print, force: bool = False, network: bool = False) -> BuildReport:
    """Build every task's image that is not current; a task that fails does not stop the others."""
    images: list[BuiltImage] = []
    failures = {f"(left out) {i}": problem for i, problem in enumerate(dataset.problems)}
    seconds: dict[str, float] = {}
    with connect(client) as engine:
        for task in dataset.all_tasks():
            started = time.monotonic()
            try:
                built = build_task(engine, dataset.name, task, base_map, progress=progress, force=force,
                                   network=network)
            except (ImageBuildError, HarborTaskError) as exc:
                failures[task.id] = exc.detail
                progress(f"[{task.id}] failed: {exc.detail}")
                continue
            images.append(built)
            if built.built:
                seconds[built.tag] = time.monotonic() - started
    return BuildReport(images, failures, seconds)


def build_task(client: docker.DockerClient, dataset: str, task: HarborTask, base_map: Mapping[str, str], *,
               progress: Progress, force: bool = False, network: bool = False) -> BuiltImage:
    """The task's image (and its sidecars' built images), built from its environment/ unless current."""
    image = task_image(dataset, task, base_map)
    for service in task.sidecars:
        if service.context is not None:
            _build_one(client, task, f"{image.name}-svc-{service.name}", image.inputs_hash, service.context,
                       base_map, progress=progress, force=force, network=network,
                       dockerfile=_service_dockerfile(service))
    return _build_one(client, task, image.name, image.inputs_hash, task.environment_dir, base_map,
                      progress=progress, force=force, network=network)


def _build_one(client: docker.DockerClient, task: HarborTask, name: str, inputs_hash: str, source: Path,
               base_map: Mapping[str, str], *, progress: Progress, force: bool, network: bool,
               dockerfile: Path | None = None) -> BuiltImage:
    if not force:
        found = current(client, name, inputs_hash, progress)
        if found is not None:
            return found
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="orsbox-harbor-") as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(source, context, symlinks=True)
        (context / "Dockerfile").write_text(rewritten_dockerfile(task, base_map, dockerfile))
        progress(f"docker build {hash_tag(name, inputs_hash)} from {source}{' with network' if network else ''}…")
        try:
            docker_build(client, name, context, inputs_hash, buildargs={}, progress=progress, network=network)
        except ImageBuildError as exc:
            raise ImageBuildError(exc.detail + _unmapped_hint(client, task, base_map)) from None
    return finish(client, name, inputs_hash, started, progress)


def _unmapped_hint(client: docker.DockerClient, task: HarborTask, base_map: Mapping[str, str]) -> str:
    """Which FROM images the engine lacks and no mapping covers: how to map them."""
    missing = []
    for source in from_images(task):
        if source in base_map:
            continue
        try:
            client.images.get(source)
        except docker.errors.DockerException:
            missing.append(source)
    if not missing:
        return ""
    pairs = ", ".join(f'"{source}=orsbox/base:latest"' for source in missing)
    return (f"\n(FROM {', '.join(missing)}: not on this engine, and it could not be pulled; to build offline, "
            f"map it to a local image: harbor_base_map = [{pairs}] in the config, or ORSBOX_HARBOR_BASE_MAP)")
