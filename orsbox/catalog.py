"""The catalog: which environments exist, and their discovery data.

Environments are images labelled `orsbox.environment`. Their splits, shared
tools and tasks are read once per image id, by running the image's agent in
describe mode in a locked-down container, and cached on disk under
`<state_dir>/catalog/<image id>-<agent digest>.json` (toolsets live in the agent
package). Discovery calls are answered from memory: no container per discovery call.

Images are untrusted: only those with a tag matching one of ops' `image_patterns` (default
`orsbox/*`, what `orsbox build` makes) become environments, and an image's `orsbox.policy` label
may only name a policy ops listed in `label_policies` (an image naming another is not served).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .backends.backend import Backend, EnvironmentImage
from .errors import BadRequest, EnvNotFound, InvalidIndex, InvalidSplit, SandboxError
from .policy import PolicySet, SandboxPolicy

log = structlog.get_logger()

JSONObject = dict[str, Any]


@dataclass(frozen=True)
class EnvironmentInfo:
    """One environment: its image, its resolved policy, and its discovery data."""

    image: EnvironmentImage
    policy: SandboxPolicy
    splits: list[JSONObject]
    tools: list[JSONObject]
    tasks: dict[str, list[JSONObject]]
    listable: dict[str, bool]  # False: the environment only offers num_tasks + get_task for that split

    @property
    def name(self) -> str:
        return self.image.name

    def split_tasks(self, split: str) -> list[JSONObject]:
        if split not in self.tasks:
            raise InvalidSplit()
        return self.tasks[split]

    def listed_tasks(self, split: str) -> list[JSONObject]:
        """`/tasks`: refused, as by the reference, where the environment cannot list its tasks."""
        tasks = self.split_tasks(split)
        if not self.listable.get(split, True):
            raise BadRequest("list_tasks is not supported for this environment. "
                             "Use the index-based API (num_tasks + get_task) instead.")
        return tasks

    def task(self, split: str, index: int) -> JSONObject:
        """Python indexing, as the reference does: -1 is the last task."""
        tasks = self.split_tasks(split)
        if not -len(tasks) <= index < len(tasks):
            raise InvalidIndex()
        return tasks[index]

    def task_range(self, split: str, start: int | None, stop: int | None) -> list[JSONObject]:
        """Slice semantics: negatives resolve against n and clamp at 0, everything clamps to n."""
        tasks = self.split_tasks(split)
        return tasks[slice(*slice(start, stop).indices(len(tasks))[:2])]


class Catalog:
    """The environments this server serves, by lower-case name."""

    def __init__(self, environments: dict[str, EnvironmentInfo], default: str | None = None) -> None:
        self._environments = environments
        names = sorted(environments)
        if default is not None and default.lower() not in environments:
            raise EnvNotFound(f"default environment {default!r} is not among {names}")
        self.default = default.lower() if default else (names[0] if names else None)

    @classmethod
    async def load(cls, backend: Backend, policies: PolicySet, cache_dir: Path,
                   default: str | None = None, only: list[str] | None = None, *,
                   image_patterns: Sequence[str] = ("orsbox/*",),
                   label_policies: Collection[str] = ()) -> Catalog:
        """Find environment images (all, or those named in `only`) and read (or recall) their discovery data."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        environments: dict[str, EnvironmentInfo] = {}
        wanted = {name.strip().lower() for name in only} if only else None
        images = [image for image in await backend.list_environment_images() if _admitted(image, image_patterns)]
        for image in _newest_per_name(images):
            if wanted is not None and image.name not in wanted:
                continue
            if image.policy_name is not None and image.policy_name not in label_policies:
                log.error("environment_unavailable", env=image.name, image=image.tags[0],
                          reason=f"its orsbox.policy label names {image.policy_name[:100]!r}, which images may not "
                                 f"choose (allowed: {sorted(label_policies) or 'none'}; ORSBOX_LABEL_POLICIES)")
                continue
            policy = policies.resolve(image.name, image.policy_name)
            try:
                data = await _described(backend, image, policy, cache_dir)
            except SandboxError as exc:  # one broken image must not keep the others from being served
                log.error("environment_unavailable", env=image.name, image=image.tags[0], reason=exc.detail)
                continue
            environments[image.name] = EnvironmentInfo(image, policy, data["splits"], data["tools"], data["tasks"],
                                                       data.get("listable", {}))
            tasks = sum(map(len, data["tasks"].values()))
            log.info("environment_found", env=image.name, image=image.tags[0], tasks=tasks)
        return cls(environments, default)

    def names(self) -> list[str]:
        """Environment names, the default first (the reference lists its first environment first)."""
        return sorted(self._environments, key=lambda name: (name != self.default, name))

    def environments(self) -> list[EnvironmentInfo]:
        return [self._environments[name] for name in self.names()]

    def is_environment(self, name: str) -> bool:
        return name.lower() in self._environments

    def get(self, name: str) -> EnvironmentInfo:
        try:
            return self._environments[name.lower()]
        except KeyError:
            raise EnvNotFound(f"unknown environment {name!r}") from None


def _admitted(image: EnvironmentImage, patterns: Sequence[str]) -> bool:
    """Whether a tag of `image` matches a pattern (a glob on `repository:tag`, or on the repository alone)."""
    for tag in image.tags:
        repository = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
        if any(fnmatch.fnmatchcase(tag, p) or fnmatch.fnmatchcase(repository, p) for p in patterns):
            return True
    log.info("environment_image_ignored", env=image.name, image=image.tags[0] if image.tags else image.image_id[:19],
             reason=f"no tag matches the image patterns {list(patterns)} (ORSBOX_IMAGE_PATTERNS)")
    return False


def _newest_per_name(images: list[EnvironmentImage]) -> list[EnvironmentImage]:
    newest: dict[str, EnvironmentImage] = {}
    for image in sorted(images, key=lambda i: i.created):
        newest[image.name] = image
    return [newest[name] for name in sorted(newest)]


async def _described(backend: Backend, image: EnvironmentImage, policy: SandboxPolicy,
                     cache_dir: Path) -> JSONObject:
    path = cache_dir / f"{image.image_id.replace(':', '_')}-{backend.agent_digest}.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    data = await backend.describe(image, policy)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    log.info("environment_described", env=image.name, image_id=image.image_id[:19])
    return data
