"""`build_images`: the base first, then each environment image asked for, skipping current ones.

An environment image is every directory ``images/<name>/`` that holds a ``Dockerfile``,
built with ``BASE_IMAGE`` set to the exact base tag, from a copy with its wheels
vendored when it has a ``requirements.txt`` (vendoring.py), and without network unless its
``build.toml`` asks for it and the operator agrees (``orsbox build --allow-network NAME``).
Its per-task images (``images/<name>/tasks/<task>/Dockerfile``: the images of the openreward sandboxes
its tasks ask for) are built right after it, on the same base, as ``orsbox/<name>-<task>``.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Collection, Sequence
from pathlib import Path

import docker
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ImageBuildError
from .base import ensure_base
from .engine import BuiltImage, Progress, connect, current, docker_build, finish
from .hashing import BASE, context_inputs_hash, hash_tag
from .vendoring import vendored_context

_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
BUILD_SETTINGS = "build.toml"  # in an image folder: what its build needs


class BuildSettings(BaseModel):
    """An image folder's `build.toml`."""

    model_config = ConfigDict(extra="forbid")

    network: bool = Field(False, description="its RUN steps need network (the operator must agree)")
    reason: str = Field("", max_length=500, description="why, shown to the operator")


def build_images(
    images_dir: Path,
    names: Sequence[str] | None = None,
    *,
    client: docker.DockerClient | None = None,
    progress: Progress = print,
    force: bool = False,
    allow_network: Collection[str] = (),
) -> list[BuiltImage]:
    """Build the images *names* (all when None) from *images_dir*, base first.

    Every environment image is built on the base, so the base is always made
    sure of first (built when it is not current) and is always the first
    entry of the result, followed by the environment images in the order
    asked.  Images that are current are skipped (``built=False``) unless
    *force*, which rebuilds the images asked for (all when *names* is None)
    but not the base when it is merely a dependency.

    Builds run without network; an image whose folder asks for it (``build.toml``:
    ``network = true``) gets it only if named in *allow_network* (the operator
    agrees), else its build is refused before it starts.
    """
    images_dir = Path(images_dir)
    envs = _resolve_env_names(image_names(images_dir), names)
    force_base = force and (names is None or BASE in names)
    with connect(client) as engine:
        base = ensure_base(engine, images_dir, force=force_base, progress=progress)
        results = [base]
        for name in envs:
            results.append(_ensure_env(engine, images_dir / name, name, base, force=force,
                                       progress=progress, allow_network=name in allow_network))
            for task, context in task_images(images_dir / name):
                results.append(_ensure_env(engine, context, f"{name}-{task}", base, force=force,
                                           progress=progress, allow_network=False))
    return results


def task_images(context: Path) -> list[tuple[str, Path]]:
    """An image folder's per-task images: (task, folder) for each ``tasks/<task>/Dockerfile``, sorted."""
    tasks = context / "tasks"
    if not tasks.is_dir():
        return []
    found = sorted((entry.name, entry) for entry in tasks.iterdir() if (entry / "Dockerfile").is_file())
    for task, _ in found:
        if not _NAME_RE.match(task):
            raise ImageBuildError(f"task image folder {tasks / task} is not a valid image name part "
                                  "(lowercase letters and digits, with . _ - between them)")
    return found


def build_network(context: Path, name: str, *, allowed: bool) -> bool:
    """Whether *name*'s build gets network: its ``build.toml`` asks (``network = true``) and the operator agreed."""
    path = context / BUILD_SETTINGS
    if not path.is_file():
        return False
    try:
        settings = BuildSettings.model_validate(tomllib.loads(path.read_text()))
    except (tomllib.TOMLDecodeError, ValidationError, UnicodeDecodeError) as exc:
        raise ImageBuildError(f"{path}: {exc}") from None
    if settings.network and not allowed:
        raise ImageBuildError(
            f"{name}'s build asks for network ({path}: {settings.reason or 'no reason given'}); builds run "
            f"without it unless you agree: orsbox build --allow-network {name}")
    return settings.network


def image_names(images_dir: Path) -> list[str]:
    """Names of the images buildable from *images_dir*: base first, then env dirs sorted."""
    if not images_dir.is_dir():
        return [BASE]
    envs = sorted(
        entry.name
        for entry in images_dir.iterdir()
        if entry.is_dir() and entry.name != BASE and (entry / "Dockerfile").is_file()
    )
    return [BASE, *envs]


def _resolve_env_names(known: list[str], names: Sequence[str] | None) -> list[str]:
    """The environment images to build, in order, without duplicates; unknown names refused."""
    if names is None:
        names = known
    elif isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ImageBuildError(
            f"unknown image(s): {', '.join(unknown)}; known images: {', '.join(known)}"
        )
    for name in names:
        if not _NAME_RE.match(name):
            raise ImageBuildError(
                f"image directory name {name!r} is not a valid image name "
                "(lowercase letters and digits, with . _ - between them)"
            )
    return [name for name in dict.fromkeys(names) if name != BASE]


def _ensure_env(
    client: docker.DockerClient,
    context: Path,
    name: str,
    base: BuiltImage,
    *,
    force: bool,
    progress: Progress,
    allow_network: bool,
) -> BuiltImage:
    """Build ``orsbox/<name>`` from *context* on *base* unless it is current."""
    inputs_hash = context_inputs_hash(context, base.image_id)
    if not force:
        found = current(client, name, inputs_hash, progress)
        if found is not None:
            return found
    network = build_network(context, name, allowed=allow_network)
    started = time.monotonic()
    with vendored_context(client, context, name, base, progress) as build_context:
        progress(f"docker build {hash_tag(name, inputs_hash)} from {context} on {base.tag}"
                 f"{' with network' if network else ''}…")
        docker_build(client, name, build_context, inputs_hash,
                     buildargs={"BASE_IMAGE": base.tag}, progress=progress, network=network)
    return finish(client, name, inputs_hash, started, progress)
