"""The Docker engine's side of a build: connecting, finding and tagging images, ``docker build``.

Every engine error becomes an `ImageBuildError` here, saying what was being done.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.images import Image

from ..agent.layout import LABEL_INPUTS
from ..errors import ImageBuildError
from .hashing import TAG_LENGTH, hash_tag, repository
from .host import LOG_TAIL_LINES

#: Where a build reports what it does, one line at a time (`print` in the CLI).
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuiltImage:
    """One image that `build_images` made sure of.

    ``tag`` is the hash tag (``orsbox/<name>:<hash[:12]>``); ``built`` is False
    when the image was current and was skipped.
    """

    name: str
    tag: str
    image_id: str
    built: bool


@contextmanager
def connect(client: docker.DockerClient | None) -> Iterator[docker.DockerClient]:
    """Yield a docker client that answers; close it afterwards if we opened it."""
    own = client is None
    try:
        engine = docker.from_env() if client is None else client
        engine.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise ImageBuildError(
            f"the docker engine does not answer (is dockerd running, is DOCKER_HOST right?): {exc}"
        ) from exc
    try:
        yield engine
    finally:
        if own:
            engine.close()


def current(client: docker.DockerClient, name: str, inputs_hash: str, progress: Progress) -> BuiltImage | None:
    """The image *name* if its hash tag exists (with ``:latest`` set), else None."""
    tag = hash_tag(name, inputs_hash)
    image = _find_image(client, tag)
    if image is None:
        return None
    _tag_latest(client, name, image)
    progress(f"{repository(name)} is current ({inputs_hash[:TAG_LENGTH]})")
    return BuiltImage(name=name, tag=tag, image_id=str(image.id), built=False)


def finish(client: docker.DockerClient, name: str, inputs_hash: str, started: float,
           progress: Progress) -> BuiltImage:
    """Check the freshly built hash tag, point ``:latest`` at it and report."""
    tag = hash_tag(name, inputs_hash)
    image = _find_image(client, tag)
    if image is None:
        raise ImageBuildError(f"{tag} was built but docker does not list it")
    _tag_latest(client, name, image)
    progress(f"{repository(name)} built as {tag} in {time.monotonic() - started:.1f}s")
    return BuiltImage(name=name, tag=tag, image_id=str(image.id), built=True)


def _find_image(client: docker.DockerClient, reference: str) -> Image | None:
    try:
        return client.images.get(reference)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"docker could not look up {reference}: {exc}") from exc


def _tag_latest(client: docker.DockerClient, name: str, image: Image) -> None:
    """Make ``orsbox/<name>:latest`` point at *image*."""
    latest = _find_image(client, f"{repository(name)}:latest")
    if latest is None or latest.id != image.id:
        image.tag(repository(name), "latest")


def docker_build(
    client: docker.DockerClient,
    name: str,
    context: Path,
    inputs_hash: str,
    *,
    buildargs: dict[str, str],
    progress: Progress,
    network: bool = False,
) -> None:
    """``docker build`` *context* as *name*'s hash tag, streaming lines prefixed by *name*.

    Its ``RUN`` steps have no network unless *network* (the image asked, and the operator agreed).
    """
    output: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    try:
        stream = client.api.build(
            path=str(context), tag=hash_tag(name, inputs_hash), buildargs=buildargs,
            labels={LABEL_INPUTS: inputs_hash}, rm=True, forcerm=True, decode=True,
            network_mode="default" if network else "none",
        )
        for chunk in stream:
            _report_chunk(name, chunk, output, progress)
    except (docker.errors.DockerException, OSError) as exc:
        raise ImageBuildError(_build_failure(name, str(exc), output)) from exc


def _report_chunk(name: str, chunk: dict[str, Any], output: deque[str], progress: Progress) -> None:
    """Print one decoded build-stream chunk; raise on an error chunk."""
    if "error" in chunk:
        raise ImageBuildError(_build_failure(name, str(chunk["error"]).strip(), output))
    text = chunk.get("stream") or chunk.get("status") or ""
    for line in str(text).splitlines():
        if line.strip():
            output.append(line)
            progress(f"[{name}] {line}")


def _build_failure(name: str, error: str, output: deque[str]) -> str:
    tail = "\n".join(output)
    return f"docker build of {repository(name)} failed: {error}" + (
        f"\n--- last build output ---\n{tail}" if tail else ""
    )
